"""What differs between tasks in the config: the data.task choice, each task's objectives and champion
metrics (with whether lower is better), and the synthetic regression generator's settings."""

from typing import Literal

from pydantic import Field

from schemas.base import StrictModel

TaskChoice = Literal["auto", "classification", "regression"]
"""data.task; a new task adds its name here and one module under stagetune/task/."""

# Which objectives and champion metrics each task offers, and whether lower is better. Mirrored by
# the Task classes (stagetune/task/), which a unit test checks against these tables.
TASK_OBJECTIVES: dict[str, dict[str, bool]] = {
    "classification": {"val_loss": True, "val_acc": False, "val_balanced_acc": False},
    "regression": {"val_loss": True, "val_rmse": True, "val_mae": True, "val_r2": False},
}
TASK_CHAMPION_METRICS: dict[str, dict[str, bool]] = {
    "classification": {"accuracy": False, "balanced_accuracy": False, "macro_f1": False},
    "regression": {"rmse": True, "mae": True, "r2": False},
}

__all__ = [
    "TASK_CHAMPION_METRICS",
    "TASK_OBJECTIVES",
    "SyntheticRegressionConfig",
    "TaskChoice",
]


class SyntheticRegressionConfig(StrictModel):
    """Settings of `builtin:synthetic_regression`: Friedman #1 (make_friedman1) plus non-linear extra outputs."""

    n_samples: int = Field(default=2000, ge=30, le=10_000_000)
    n_features: int = Field(default=10, ge=5, le=10_000, description="Friedman #1 uses the first 5.")
    n_outputs: int = Field(default=1, ge=1, le=16, description="Target columns y0 (Friedman #1), y1, ...")
    noise: float = Field(default=1.0, ge=0, description="Standard deviation of the Gaussian noise on each output.")
