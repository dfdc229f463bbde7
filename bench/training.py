"""Training shared by every compared method: one search trial, and the final retrain plus test evaluation.

Only the search method differs between rows of the benchmark: trials and the final retrain all go
through stagetune's training core (`build_model`, `make_train_loader`, `fit`) with the same data.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.datasets import BenchData
from schemas.config import TASK_OBJECTIVES
from schemas.final import TestMetrics
from schemas.hyperparams import HyperParams
from schemas.results import EpochRecord
from stagetune.evaluation import evaluate_on_test
from stagetune.models import build_model
from stagetune.task.base import AnyTestMetrics
from stagetune.training.device import resolve_device
from stagetune.training.loaders import make_eval_loader, make_train_loader
from stagetune.training.loop import FitResult, fit

EpochCallback = Callable[[EpochRecord], None]


def objective_value(record: EpochRecord, objective: str) -> float:
    """The epoch's value of the config's objective (val_loss, val_acc, val_rmse, ...); NaN if missing."""
    value = record.val_loss if objective == "val_loss" else record.metric(objective)
    return math.nan if value is None else float(value)


def best_objective(history: list[EpochRecord], objective: str) -> float:
    """The best epoch's objective value (lowest loss/RMSE/MAE, highest accuracy/R²); NaN when no epoch has one."""
    values = [v for v in (objective_value(r, objective) for r in history) if math.isfinite(v)]
    if not values:
        return math.nan
    lower_is_better = any(table.get(objective, False) for table in TASK_OBJECTIVES.values())
    return min(values) if lower_is_better else max(values)


def train_search_trial(
    data: BenchData, hp: HyperParams, epochs: int, seed: int, on_epoch: EpochCallback | None = None
) -> FitResult:
    """Train `hp` for up to `epochs` epochs on the sampled training rows, validating on the sampled validation rows.

    `on_epoch` sees every epoch and may raise (a pruning exception) to stop the trial: it propagates.
    """
    config, arrays = data.config, data.arrays
    torch.manual_seed(seed)
    model = build_model(
        config.model.family, hp, data.input_shape, data.task.output_size, config.model.import_path, seed=seed
    )
    feed = make_train_loader(
        arrays.X_train_sampled, arrays.y_train_sampled, hp, data.task, seed, config.sample.oversample_ratio
    )
    return fit(
        model,
        feed,
        make_eval_loader(arrays.X_val_sampled, arrays.y_val_sampled, batch_size=1024, task=data.task),
        hp,
        epochs,
        resolve_device(config.execution.device),
        on_epoch=on_epoch,
        grad_clip_norm=config.training.grad_clip_norm,
        amp_bf16=config.execution.amp_bf16,
        max_batches_per_epoch=config.training.max_batches_per_epoch,
    )


@dataclass(frozen=True)
class FinalOutcome:
    """The final retrain of a method's best hyperparameters and its held-out test scores."""

    epochs: int
    test_metrics: dict[str, float]
    predicted_shares: list[float] | None = None  # classification: share of test rows predicted as each class

    def metric(self, name: str) -> float:
        """The test metric called `name` (accuracy, balanced_accuracy, r2, rmse, ...); NaN when missing."""
        return self.test_metrics.get(name, math.nan)


def final_retrain(data: BenchData, hp: HyperParams) -> FinalOutcome:
    """stagetune's final-stage rule for one network, for every peer: the full training split, early stopping on
    validation loss, LR x factor on plateau, gradient clipping, the best epoch's weights; then one test evaluation.
    (stagetune's own final stage trains `final.ensemble` such networks; the epochs of its extra members are
    added to the peers' search budget instead, see bench/stagetune_runner.py.)"""
    config, arrays, final = data.config, data.arrays, data.config.final
    device = resolve_device(config.execution.device)
    # Dropout masks come from the global generator: seed it, so a point retrains the same for every method.
    torch.manual_seed(config.seed)
    model = build_model(
        config.model.family, hp, data.input_shape, data.task.output_size, config.model.import_path, seed=config.seed
    )
    feed = make_train_loader(arrays.X_train, arrays.y_train, hp, data.task, config.seed, config.sample.oversample_ratio)
    outcome = fit(
        model,
        feed,
        make_eval_loader(arrays.X_val, arrays.y_val, batch_size=1024, task=data.task),
        hp,
        final.max_epochs,
        device,
        grad_clip_norm=config.training.grad_clip_norm,
        amp_bf16=config.execution.amp_bf16,
        lr_plateau_patience=final.lr_plateau_patience,
        lr_plateau_factor=final.lr_plateau_factor,
        early_stopping_patience=final.early_stopping_patience,
        max_batches_per_epoch=config.training.max_batches_per_epoch,
        keep_best_state=True,
    )
    if outcome.best_epoch is None:
        return FinalOutcome(len(outcome.history), {})
    test = evaluate_on_test(model, arrays.X_test, arrays.y_test, data.task, device)
    return FinalOutcome(len(outcome.history), test.summary_metrics(), test_predicted_shares(test))


def test_predicted_shares(test: AnyTestMetrics) -> list[float] | None:
    """Share of the test rows predicted as each class (the confusion matrix's column sums); None for regression."""
    if not isinstance(test, TestMetrics):
        return None
    columns = [sum(column) for column in zip(*test.confusion_matrix, strict=True)]
    return [round(count / max(1, test.n_samples), 4) for count in columns]
