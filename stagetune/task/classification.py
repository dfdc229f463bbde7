"""Classification: cross-entropy on logits, accuracy and balanced accuracy, strata are the classes."""

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from schemas.final import TestMetrics
from stagetune.task.base import Direction, Task


class ClassificationTask(Task):
    """Single-label classification over `class_names` (labels 0..C-1)."""

    name = "classification"
    objectives: ClassVar[dict[str, Direction]] = {
        "val_loss": "minimize",
        "val_acc": "maximize",
        "val_balanced_acc": "maximize",
    }
    champion_metrics: ClassVar[dict[str, Direction]] = {
        "accuracy": "maximize",
        "balanced_accuracy": "maximize",
        "macro_f1": "maximize",
    }
    default_champion_metric = "accuracy"
    default_loss = "cross_entropy"
    target_dtype = torch.int64

    def __init__(self, class_names: Sequence[str], balanced_val_loss: bool = False) -> None:
        self.class_names = [str(name) for name in class_names]
        self.balanced_val_loss = balanced_val_loss

    @property
    def output_size(self) -> int:
        return len(self.class_names)

    def train_loss(self, class_weights: torch.Tensor | None = None) -> nn.Module:
        return nn.CrossEntropyLoss(weight=class_weights)

    def eval_loss(self) -> nn.Module:
        return nn.CrossEntropyLoss()

    def validation_loss(self, outputs: torch.Tensor, targets: torch.Tensor, plain: float) -> float:
        if not self.balanced_val_loss:
            return plain
        # The mean over the classes present of each class's mean cross-entropy (skewed classes: see
        # stagetune.data.defaults); a uniform prediction still scores ln C, as the diagnosis expects.
        losses = nn.functional.cross_entropy(outputs.float(), targets, reduction="none")
        classes = outputs.shape[1]
        totals = torch.bincount(targets, minlength=classes)
        sums = torch.zeros(classes, dtype=losses.dtype, device=losses.device).index_add_(0, targets, losses)
        present = totals > 0
        return float((sums[present] / totals[present]).mean())

    def batch_sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs.argmax(dim=1) == targets).sum().float().reshape(1)

    def train_metrics(self, sums: torch.Tensor, samples: int) -> dict[str, float]:
        return {"train/acc": float(sums[0]) / max(samples, 1)}

    def eval_metrics(self, outputs: torch.Tensor, targets: torch.Tensor, prefix: str = "val") -> dict[str, float]:
        predicted = outputs.argmax(dim=1)
        hits = predicted == targets
        classes = outputs.shape[1]
        totals = torch.bincount(targets, minlength=classes)
        hit_counts = torch.bincount(targets[hits], minlength=classes)
        present = totals > 0
        balanced = (hit_counts[present].float() / totals[present].float()).mean().item()
        # The most predicted class's share of the rows, and of their labels: a model that says one class
        # for (nearly) every row has collapsed to it (stagetune.diagnosis).
        predicted_counts = torch.bincount(predicted, minlength=classes)
        top = int(predicted_counts.argmax())
        rows = max(len(targets), 1)
        return {
            f"{prefix}/acc": hits.float().mean().item(),
            f"{prefix}/balanced_acc": balanced,
            f"{prefix}/top_class_pred_share": float(predicted_counts[top]) / rows,
            f"{prefix}/top_class_true_share": float(totals[top]) / rows,
        }

    def expected_initial_loss(self, targets: np.ndarray) -> float:
        # Near-zero logits from the small-init head give a uniform softmax: ln(C).
        return math.log(self.output_size)

    def overfit_score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        # Counted, not averaged in float32: 90 of 100 rows must read 0.9, not 0.89999998 below a 0.9 target.
        return int((outputs.argmax(dim=1) == targets).sum()) / max(1, targets.numel())

    def overfit_ceiling(self, inputs: np.ndarray, targets: np.ndarray) -> float:
        # Rows with identical inputs (few columns, or a missing value imputed to the same median) but different
        # labels cannot all be memorised: the best any model can do is predict each group's most common
        # label. A 3-column passenger table (sex, class, imputed age) tops out at 0.92-0.97 on 100 rows.
        groups = np.unique(np.ascontiguousarray(inputs), axis=0, return_inverse=True)[1].ravel()
        labels = np.asarray(targets, dtype=np.int64).ravel()
        if np.bincount(groups).max() == 1:
            return 1.0
        # Per (group, label) pair, how many rows; the best label of each group is right on that many rows.
        pairs = np.unique(np.stack([groups, labels], axis=1), axis=0, return_counts=True)
        pair_groups, pair_counts = pairs[0][:, 0], pairs[1]
        best = np.zeros(groups.max() + 1, dtype=np.int64)
        np.maximum.at(best, pair_groups, pair_counts)
        return float(best.sum() / len(labels))

    def overfit_target(self, target: float, ceiling: float) -> float:
        # Accuracy counts rows: allow the same share of rows missed as when every row can be memorised
        # (0.99: 1 row in 100). A product (0.99 x 0.94 = 0.9306) would demand every reachable row.
        return max(0.0, ceiling - (1.0 - target))

    def prior_loss(self, targets: np.ndarray) -> float:
        frequencies = np.unique(targets, return_counts=True)[1] / len(targets)
        return float(-(frequencies * np.log(frequencies)).sum())

    @staticmethod
    def strata(targets: np.ndarray) -> np.ndarray:
        return np.asarray(targets, dtype=np.int64)

    def test_metrics(self, outputs: torch.Tensor, targets: torch.Tensor, loss: float) -> TestMetrics:
        from stagetune.evaluation import classification_test_metrics  # evaluation imports the training loop

        predicted = outputs.argmax(dim=1).cpu().numpy().astype(np.int64)
        return classification_test_metrics(targets.cpu().numpy().astype(np.int64), predicted, loss, self.class_names)
