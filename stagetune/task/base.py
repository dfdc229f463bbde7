"""The Task seam: everything that differs between classification and regression, behind one interface.

A stage never asks "is this regression?": it asks its Task for the loss, the output size, the
per-epoch metrics, the objective's direction, the expected initial loss, the strata of a stratified
split and the test metrics. A new task (say multi-label) is one subclass in a new module, registered
in `stagetune.task.registry`, plus its literal and its objectives and champion metrics in
`schemas/task.py`. What is still written per task outside this package: the task literal of the
stage results (schemas/results.py), a test-metrics model (schemas/final.py), how Stage 1 encodes the
target (stagetune/data/loading.py, stage.py) and the final section of the report.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import nn

from schemas.final import RegressionTestMetrics, TestMetrics

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Direction = Literal["minimize", "maximize"]
AnyTestMetrics = TestMetrics | RegressionTestMetrics


class Task(ABC):
    """One learning task: how targets are fed, scored and compared."""

    name: ClassVar[str]
    objectives: ClassVar[dict[str, Direction]]
    """search.objective values this task offers, with their direction."""
    champion_metrics: ClassVar[dict[str, Direction]]
    """final.champion_metric values (test metrics) with their direction."""
    default_champion_metric: ClassVar[str]
    target_dtype: ClassVar[torch.dtype]

    @property
    @abstractmethod
    def output_size(self) -> int:
        """Width of the model's output layer."""

    @abstractmethod
    def train_loss(self, class_weights: torch.Tensor | None = None) -> nn.Module:
        """The training loss (class weights only where the task has classes)."""

    @abstractmethod
    def eval_loss(self) -> nn.Module:
        """The plain (unweighted) loss validation and the sanity gate use, so runs compare."""

    def validation_loss(self, outputs: torch.Tensor, targets: torch.Tensor, plain: float) -> float:
        """The validation loss over a whole evaluation set, given its plain mean: the plain mean unless the
        task weighs it (a classification task on skewed classes weighs every class equally)."""
        return plain

    @abstractmethod
    def batch_sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Sufficient statistics of one training batch (a 1-d tensor, summed over batches)."""

    @abstractmethod
    def train_metrics(self, sums: torch.Tensor, samples: int) -> dict[str, float]:
        """Training metrics ("train/...") from the summed `batch_sums` of an epoch."""

    @abstractmethod
    def eval_metrics(self, outputs: torch.Tensor, targets: torch.Tensor, prefix: str = "val") -> dict[str, float]:
        """Metrics ("<prefix>/...") of the model outputs over a whole evaluation set."""

    @abstractmethod
    def expected_initial_loss(self, targets: np.ndarray) -> float:
        """The loss a freshly initialised (small-head) model should show on these targets."""

    @abstractmethod
    def overfit_score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """The score the sanity gate's overfit check must push to its target (accuracy, R²)."""

    def overfit_ceiling(self, inputs: np.ndarray, targets: np.ndarray) -> float:
        """The best overfit score any model can reach on these rows (1.0 unless the task knows better)."""
        return 1.0

    def overfit_target(self, target: float, ceiling: float) -> float:
        """The overfit score that counts as memorised: `target` (sanity.overfit_target_acc) as a share of the
        reachable `ceiling`."""
        return target * ceiling

    @abstractmethod
    def prior_loss(self, targets: np.ndarray) -> float:
        """The best loss without looking at the inputs (the flat-loss floor of the overfit check)."""

    @staticmethod
    @abstractmethod
    def strata(targets: np.ndarray) -> np.ndarray:
        """Integer groups a stratified split or subsample keeps in proportion."""

    @abstractmethod
    def test_metrics(self, outputs: torch.Tensor, targets: torch.Tensor, loss: float) -> AnyTestMetrics:
        """The final stage's test metrics from the outputs over the whole test split."""

    def with_loss(self, loss: str) -> "Task":
        """The task training with `loss` (a trial's `hp.loss`); "auto" keeps the configured one."""
        if loss in ("auto", self.default_loss):
            return self
        raise ValueError(f"loss {loss!r} does not fit a {self.name} task")

    default_loss: ClassVar[str] = ""

    def objective_direction(self, objective: str) -> Direction:
        """Direction of a search objective; ValueError when the task does not offer it."""
        if objective not in self.objectives:
            raise ValueError(f"objective {objective!r} is not one of {self.name}'s {list(self.objectives)}")
        return self.objectives[objective]

    def champion_metric(self, configured: str) -> tuple[str, Direction]:
        """The champion metric (resolving "auto") and its direction."""
        name = self.default_champion_metric if configured == "auto" else configured
        if name not in self.champion_metrics:
            raise ValueError(f"champion metric {name!r} is not one of {self.name}'s {list(self.champion_metrics)}")
        return name, self.champion_metrics[name]

    def targets_tensor(self, y: np.ndarray) -> torch.Tensor:
        """Targets as the tensor the loss expects."""
        return torch.as_tensor(y, dtype=self.target_dtype)
