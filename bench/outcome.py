"""What one method produced on one dataset at one seed: its compute, its best point and its test score."""

import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

from schemas.hyperparams import HyperParams


def method_seed(seed: int, method: str) -> int:
    """The random stream of `method` at benchmark seed `seed`: distinct per method, so no two methods (nor
    stagetune's coarse stage, seeded with `seed`) draw the same points from one seeded sampler."""
    return seed + 1000 * (1 + zlib.crc32(method.encode()) % 997)


@dataclass(frozen=True)
class MethodOutcome:
    """One row of raw results: a method's search on one dataset and seed, then its final retrain."""

    method: str
    dataset: str
    seed: int
    status: str  # "ok", "not installed", or "failed: <reason>"
    budget_epochs: float = 0.0  # the budget the method was given (epochs over the sampled training rows)
    epochs_used: float = 0.0  # search epochs it ran, pruned ones included
    trials: int = 0
    pruned: int = 0
    final_epochs: int = 0
    test_metric: float = float("nan")
    search_seconds: float = float("nan")
    total_seconds: float = float("nan")
    best_hyperparams: HyperParams | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        data = asdict(self)
        data["best_hyperparams"] = None if self.best_hyperparams is None else self.best_hyperparams.model_dump()
        return data
