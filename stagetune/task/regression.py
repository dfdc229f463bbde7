"""Regression: MSE (or Huber, L1) on targets standardised with the training split's mean and std, metrics
(RMSE, MAE, R²) in the targets' original units, strata from quantile bins of the target."""

from collections.abc import Sequence
from typing import ClassVar, Literal, cast

import numpy as np
import torch
from torch import nn

from schemas.final import OutputMetrics, RegressionTestMetrics
from stagetune.task.base import Direction, Task

RegressionLoss = Literal["mse", "huber", "l1"]
MAX_STRATA = 10
MIN_ROWS_PER_STRATUM = 3
ROWS_PER_STRATUM = 30
"""A quantile bin per this many rows (at most MAX_STRATA): enough rows in each for a three-way split."""
MAX_STORED_PREDICTIONS = 2000
"""Test rows whose (true, predicted) pairs the result keeps for the report's scatter."""


def regression_scores(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-output RMSE, MAE and R² of (n, k) arrays; a constant true column scores R² 1.0 when predicted
    exactly and 0.0 otherwise (scikit-learn's convention)."""
    true = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    pred = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)
    error = pred - true
    sse = (error**2).sum(axis=0)
    sst = ((true - true.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(sst > 0, 1 - sse / np.where(sst > 0, sst, 1), np.where(sse == 0, 1.0, 0.0))
    return np.sqrt(sse / len(true)), np.abs(error).mean(axis=0), r2


class RegressionTask(Task):
    """One or several real-valued outputs."""

    name = "regression"
    objectives: ClassVar[dict[str, Direction]] = {
        "val_loss": "minimize",
        "val_rmse": "minimize",
        "val_mae": "minimize",
        "val_r2": "maximize",
    }
    champion_metrics: ClassVar[dict[str, Direction]] = {"rmse": "minimize", "mae": "minimize", "r2": "maximize"}
    default_champion_metric = "rmse"
    default_loss = "mse"
    target_dtype = torch.float32

    def __init__(
        self, target_names: Sequence[str], mean: Sequence[float], std: Sequence[float], loss: RegressionLoss = "mse"
    ) -> None:
        if not (len(target_names) == len(mean) == len(std)) or not target_names:
            raise ValueError("one mean and std per target column")
        self.target_names = list(target_names)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.loss = loss

    @property
    def output_size(self) -> int:
        return len(self.target_names)

    def with_loss(self, loss: str) -> "RegressionTask":
        if loss in ("auto", self.loss):
            return self
        if loss not in ("mse", "huber", "l1"):
            raise ValueError(f"loss {loss!r} does not fit a regression task: use mse, huber or l1")
        return RegressionTask(self.target_names, self.mean.tolist(), self.std.tolist(), cast(RegressionLoss, loss))

    def train_loss(self, class_weights: torch.Tensor | None = None) -> nn.Module:
        # Huber's delta of 1 is one standard deviation of the standardised target.
        return {"mse": nn.MSELoss(), "huber": nn.HuberLoss(delta=1.0), "l1": nn.L1Loss()}[self.loss]

    def eval_loss(self) -> nn.Module:
        return self.train_loss()

    def targets_tensor(self, y: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(y).reshape(len(y), -1), dtype=torch.float32)

    def batch_sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        outputs, targets = outputs.float().reshape(targets.shape), targets.float()
        return torch.cat([((outputs - targets) ** 2).sum(0), targets.sum(0), (targets**2).sum(0)])

    def train_metrics(self, sums: torch.Tensor, samples: int) -> dict[str, float]:
        k = self.output_size
        values = sums.double().cpu().numpy()
        mse, mean, square = values[:k] / samples, values[k : 2 * k] / samples, values[2 * k :] / samples
        variance = np.maximum(square - mean**2, 1e-12)
        return {
            "train/rmse": float(np.mean(np.sqrt(mse) * self.std)),
            "train/r2": float(np.mean(1 - mse / variance)),
        }

    def to_original(self, values: torch.Tensor | np.ndarray) -> np.ndarray:
        """Standardised (n, k) values back in the targets' units."""
        array = values.detach().double().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        return array.reshape(len(array), -1) * self.std + self.mean

    def eval_metrics(self, outputs: torch.Tensor, targets: torch.Tensor, prefix: str = "val") -> dict[str, float]:
        rmse, mae, r2 = regression_scores(self.to_original(targets), self.to_original(outputs))
        return {
            f"{prefix}/rmse": float(rmse.mean()),
            f"{prefix}/mae": float(mae.mean()),
            f"{prefix}/r2": float(r2.mean()),
        }

    def expected_initial_loss(self, targets: np.ndarray) -> float:
        # A small-init head outputs ~0: the loss of predicting 0 (the training mean) for every row,
        # which is ~1 per output for MSE on standardised targets.
        y = self.targets_tensor(targets)
        return float(self.eval_loss()(torch.zeros_like(y), y))

    def overfit_score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return float(regression_scores(targets.cpu().numpy(), outputs.detach().cpu().numpy())[2].mean())

    def overfit_ceiling(self, inputs: np.ndarray, targets: np.ndarray) -> float:
        # Rows with identical inputs (often a missing value imputed to the same median) but different
        # targets cannot all be fitted: the best a memorising model can do is predict each group's
        # mean, so R² tops out at 1 - (within-group SSE) / SST.
        y = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
        groups = np.unique(np.ascontiguousarray(inputs), axis=0, return_inverse=True)[1].ravel()
        counts = np.bincount(groups)
        if counts.max() == 1:
            return 1.0
        means = np.stack([np.bincount(groups, weights=y[:, k]) / counts for k in range(y.shape[1])], axis=1)
        sse = ((y - means[groups]) ** 2).sum(axis=0)
        sst = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
        return float(np.mean(np.where(sst > 0, 1 - sse / np.where(sst > 0, sst, 1), 1.0)))

    def prior_loss(self, targets: np.ndarray) -> float:
        y = self.targets_tensor(targets)
        return float(self.eval_loss()(y.mean(0, keepdim=True).expand_as(y), y))

    @staticmethod
    def strata(targets: np.ndarray) -> np.ndarray:
        return quantile_bins(np.asarray(targets).reshape(len(targets), -1)[:, 0])

    def test_metrics(self, outputs: torch.Tensor, targets: torch.Tensor, loss: float) -> RegressionTestMetrics:
        true, pred = self.to_original(targets), self.to_original(outputs)
        rmse, mae, r2 = regression_scores(true, pred)
        per_output = [
            OutputMetrics(name=name, rmse=float(a), mae=float(b), r2=float(c))
            for name, a, b, c in zip(self.target_names, rmse, mae, r2, strict=True)
        ]
        keep = slice(0, MAX_STORED_PREDICTIONS)
        return RegressionTestMetrics(
            loss=loss,
            rmse=float(rmse.mean()),
            mae=float(mae.mean()),
            r2=float(r2.mean()),
            per_output=per_output,
            n_samples=len(true),
            y_true=true[keep].tolist(),
            y_pred=pred[keep].tolist(),
        )


def quantile_bins(values: np.ndarray) -> np.ndarray:
    """Codes 0..B-1 of quantile bins of `values` (about ROWS_PER_STRATUM rows each, at most MAX_STRATA bins)."""
    n_bins = int(min(MAX_STRATA, max(1, len(values) // ROWS_PER_STRATUM)))
    if n_bins == 1:
        return np.zeros(len(values), dtype=np.int64)
    edges = np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1]))
    codes = np.unique(np.searchsorted(edges, values, side="right"), return_inverse=True)[1].astype(np.int64)
    # Ties can leave a bin with too few rows for a three-way split: merge it into its lower neighbour.
    counts = np.bincount(codes)
    while len(counts) > 1 and counts.min() < MIN_ROWS_PER_STRATUM:
        small = int(np.argmin(counts))
        codes[codes == small] = small - 1 if small > 0 else 1
        codes = np.unique(codes, return_inverse=True)[1].astype(np.int64)
        counts = np.bincount(codes)
    return codes


def standardise_targets(y_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per output of the training targets (std of a constant output is refused upstream)."""
    y = np.asarray(y_train, dtype=np.float64).reshape(len(y_train), -1)
    return y.mean(axis=0), y.std(axis=0)
