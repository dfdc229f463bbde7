"""Search-stage contracts: a trial as recorded, and how the coarse results narrowed the search space."""

from typing import Literal, Self

from pydantic import Field, model_validator

from schemas.base import StrictModel
from schemas.hyperparams import HyperParams
from schemas.search_space import Param, Scale

TrialState = Literal["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"]
Direction = Literal["minimize", "maximize"]
ChangeAction = Literal["narrowed", "widened_low", "widened_high", "widened_both", "kept", "fixed", "choices_reduced"]


class TrialRecord(StrictModel):
    """One search trial: its typed hyperparameters, the Optuna params they came from, and its outcome."""

    number: int = Field(ge=0, description="Optuna trial number.")
    state: TrialState
    value: float | None = Field(default=None, description="Objective value (last reported one for a pruned trial).")
    hyperparams: HyperParams
    params: dict[str, bool | int | float | str] = Field(
        default_factory=dict, description="Optuna params as sampled (fixed parameters are not among them)."
    )
    epochs_run: int = Field(default=0, ge=0)
    fail_reason: str | None = None
    mlflow_run_id: str | None = None
    diagnosis: str | None = Field(default=None, description="Short diagnosis code of the trial's curves.")


class ReusedTrial(StrictModel):
    """A known point enqueued as a coarse trial: the champion's hyperparameters or a previous run's best trial."""

    source: Literal["champion", "previous_run"]
    label: str = Field(description="Where it came from, e.g. 'digits v3 (champion)' or 'run 1a2b3c4d refine trial 5'.")
    source_run_id: str = Field(description="The MLflow run its hyperparameters were read from.")
    model_version: int | None = Field(default=None, description="The registered version (champion only).")
    source_value: float | None = Field(default=None, description="Its objective (or test metric) back then.")
    hyperparams: HyperParams
    number: int | None = Field(default=None, description="Its coarse trial number; None: not enqueued.")
    skipped: str | None = Field(default=None, description="Why it was not enqueued (outside the space, duplicate).")
    value: float | None = Field(default=None, description="Its coarse objective in this run.")
    rank: int | None = Field(default=None, ge=1, description="Its rank among this run's completed coarse trials.")


class ParamChange(StrictModel):
    """What narrowing did to one parameter, and why, in a sentence with numbers."""

    name: str = Field(description="Search-space key, e.g. 'dropout' or 'learning_rate.adamw'.")
    kind: Literal["float", "int", "categorical"]
    scale: Scale | None = Field(default=None, description="None for a categorical parameter.")
    old: Param
    new: Param
    action: ChangeAction
    reason: str
    shift: str | None = Field(
        default=None, description="How the coarse verdict moved this range after narrowing (refine.diagnosis_shift)."
    )


class NarrowingReport(StrictModel):
    """How the refinement space was derived from the coarse trials (or why it was not)."""

    fallback: bool = Field(description="True: too few completed trials, the space was returned unchanged.")
    reason: str
    direction: Direction
    top_trials: list[int] = Field(description="Optuna numbers of the trials the new ranges are built around.")
    n_completed: int = Field(ge=0, description="COMPLETE trials with a finite value.")
    changes: list[ParamChange] = Field(default_factory=list)
    hard_limits_hit: list[str] = Field(default_factory=list, description="Bounds clipped to a hard limit.")
    diagnosis_shift: str | None = Field(
        default=None,
        description="Why the narrowed ranges were (or were not) moved by the coarse verdict; None: switched off.",
    )


class Limit(StrictModel):
    """An absolute [low, high] bound a narrowed (or widened) range is clipped to."""

    low: float
    high: float

    @model_validator(mode="after")
    def _check_bounds(self) -> Self:
        if not self.low < self.high:
            raise ValueError(f"a hard limit needs low < high, got low={self.low}, high={self.high}")
        return self


class HardLimits(StrictModel):
    """Absolute limits per numeric parameter; widening at a boundary never goes beyond them."""

    learning_rate: Limit = Limit(low=1e-6, high=1.0)
    weight_decay: Limit = Limit(low=1e-8, high=0.1)
    dropout: Limit = Limit(low=0.0, high=0.9)
    momentum: Limit = Limit(low=0.0, high=0.99)
    width: Limit = Limit(low=4, high=4096)
    depth: Limit = Limit(low=0, high=8)
    channels: Limit = Limit(low=4, high=512)
    batch_size: Limit = Limit(low=8, high=4096)
    params: dict[str, Limit] = Field(
        default_factory=dict,
        description="Limits of the model's own numeric hyperparameters (space.params), by name. Without one, "
        "widening keeps a range's sign: a low >= 1 integer range stays >= 1, a low >= 0 range stays >= 0.",
    )


class NarrowingSettings(StrictModel):
    """How coarse results narrow the search space (fractions are of the old width in log/linear space)."""

    top_k: int = Field(default=5, ge=1, description="Build the new ranges around the best top_k completed trials.")
    top_quantile: float | None = Field(
        default=None, gt=0, le=1, description="If set: use this best fraction of completed trials (at least 2)."
    )
    margin: float = Field(default=0.25, ge=0, description="Share of the top values' spread added on each side.")
    min_width: float = Field(default=0.1, gt=0, le=1, description="Minimum new width, as a share of the old one.")
    boundary_fraction: float = Field(
        default=0.1, ge=0, lt=0.5, description="The best value this close to an old bound counts as at the boundary."
    )
    widen_factor: float = Field(
        default=0.5, ge=0, description="At a boundary: move that bound outward by this share of the old width."
    )
    min_completed: int = Field(default=3, ge=1, description="Fewer completed trials: keep the space unchanged.")
    hard_limits: HardLimits = HardLimits()


class DiagnosisShiftSettings(StrictModel):
    """Let a clear diagnosis of the best coarse trials move the narrowed ranges in the advised direction.

    When a clear majority of the narrowing's top trials underfit, capacity ranges move up (width, depth) and
    regularisation down (dropout, weight decay); when they overfit, regularisation moves up. Each moved range
    keeps the best trial's value and stays inside the coarse range (or the boundary rule's widening).
    Off by default: the benchmark did not show it helps (bench/README.md, issue 17 part B).
    """

    enabled: bool = Field(
        default=False,
        description="true: move the narrowed ranges by the coarse verdict. Off by default: on glass (the only suite "
        "set where it fired, with coarse.epochs 8) it lost 0.055 test balanced accuracy over 6 paired seeds, and "
        "on the embedded defaults it never fired (bench/README.md, issue 17 part B).",
    )
    fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="The advised bound moves outward by this share of the narrowed width; the other bound moves "
        "inward by the same amount, never past the best trial's value.",
    )
