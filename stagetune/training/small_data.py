"""Small data: k-fold cross-validation instead of one validation split of a few dozen rows.

With little data one validation split cannot rank trials or decide when to stop training (TUNING-RULES.md,
what the sources leave implicit): on 31 validation rows one row moves accuracy by 3 points, and the final
training of issue 17's 214-row table early-stopped after 7 epochs on such noise. When Stage 1 finds the
training split small (`search.cv_folds` auto, see stagetune.data.defaults):

- a trial trains one model per fold of its training and validation rows together (stratified by the
  task's strata), each for the trial's epochs from the same initialisation seed, and its curve is the
  mean over the folds, epoch by epoch: the objective is read on every row instead of the few dozen;
- the final training first runs the same folds with early stopping, takes the median of the folds' best
  epochs, then trains on the training and validation rows together for that many epochs, without early
  stopping (there is no held-out row left to stop on; the test split stays untouched).

Like the rest of the training core, this module imports neither Prefect, Optuna nor MLflow.
"""

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from schemas.config import PipelineConfig
from schemas.hyperparams import HyperParams
from schemas.results import EpochRecord
from stagetune.data.source import Features, LazyRows
from stagetune.task.base import Task
from stagetune.training.loaders import make_eval_loader, make_train_loader
from stagetune.training.loop import FitResult, StopTraining, fit
from stagetune.training.reproducibility import seed_global_generator

ModelFactory = Callable[[], nn.Module]


@dataclass(frozen=True)
class FitOptions:
    """The settings every fold's `fit` shares."""

    grad_clip_norm: float | None = 5.0
    amp_bf16: bool = False
    max_batches_per_epoch: int | None = None
    oversample_ratio: float = 1.0

    @classmethod
    def of(cls, config: PipelineConfig) -> "FitOptions":
        """The options a pipeline config sets."""
        return cls(
            config.training.grad_clip_norm,
            config.execution.amp_bf16,
            config.training.max_batches_per_epoch,
            config.sample.oversample_ratio,
        )


@dataclass
class FoldsResult:
    """The folds' mean curve (as one FitResult) and each fold's best epoch."""

    fit: FitResult
    best_epochs: list[int] = field(default_factory=list)


def fold_indices(strata: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) row indices of `folds` folds, stratified when every stratum has `folds` rows."""
    # Imported here: with it, the training core (loop, loaders, this module) imports no scikit-learn, whose
    # import (~1 s, with SciPy) only the callers that split data pay.
    from sklearn.model_selection import KFold, StratifiedKFold

    _, counts = np.unique(strata, return_counts=True)
    splitter = StratifiedKFold if counts.min() >= folds else KFold
    rows = np.zeros((len(strata), 1))
    return list(splitter(n_splits=folds, shuffle=True, random_state=seed).split(rows, strata))


def cross_validate(
    build: ModelFactory,
    x: Features,
    y: np.ndarray,
    hp: HyperParams,
    task: Task,
    epochs: int,
    device: torch.device,
    *,
    folds: int,
    seed: int,
    options: FitOptions,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    early_stopping_patience: int | None = None,
) -> FoldsResult:
    """Train one model per fold (the same initialisation seed each); the result's history is the folds'
    mean, epoch by epoch, passed to `on_epoch` in order (StopTraining there: status "stopped").

    A fold that diverges makes the whole result diverged. With early stopping the folds' curves end at
    different epochs: the mean covers the epochs every fold ran."""
    results, best_epochs = [], []
    for train_rows, val_rows in fold_indices(task.strata(y), folds, seed):
        seed_global_generator(seed)  # only for randomness in a custom model's forward: `build` seeds the rest
        feed = make_train_loader(x[train_rows], y[train_rows], hp, task, seed, options.oversample_ratio)
        val_loader = make_eval_loader(x[val_rows], y[val_rows], batch_size=1024, task=task)
        result = fit(
            build(),
            feed,
            val_loader,
            hp,
            epochs,
            device,
            grad_clip_norm=options.grad_clip_norm,
            amp_bf16=options.amp_bf16,
            early_stopping_patience=early_stopping_patience,
            max_batches_per_epoch=options.max_batches_per_epoch,
        )
        if result.status == "diverged":
            return FoldsResult(
                FitResult(history=mean_history([result.history]), status="diverged", reason=result.reason)
            )
        results.append(result)
        best_epochs.append(result.best_epoch if result.best_epoch is not None else len(result.history) - 1)
    merged = FitResult(history=[])
    for record in mean_history([r.history for r in results]):
        merged.history.append(record)
        if record.val_loss is not None and (merged.best_val_loss is None or record.val_loss < merged.best_val_loss):
            merged.best_val_loss, merged.best_epoch = record.val_loss, record.epoch
        if on_epoch is not None:
            try:
                on_epoch(record)
            except StopTraining as stop:
                merged.status, merged.reason = "stopped", str(stop)
                return FoldsResult(merged, best_epochs)
    if any(r.status == "early_stopped" for r in results):
        merged.status = "early_stopped"
        merged.reason = f"folds' best epochs {best_epochs}"
    return FoldsResult(merged, best_epochs)


def joined(x_train: Features, y_train: np.ndarray, x_val: Features, y_val: np.ndarray) -> tuple[Features, np.ndarray]:
    """The training and validation rows as one set (the folds are cut from it); lazily read rows stay lazy."""
    labels = np.concatenate([y_train, y_val])
    if isinstance(x_train, np.ndarray) and isinstance(x_val, np.ndarray):
        return np.concatenate([x_train, x_val]), labels
    if isinstance(x_train, LazyRows) and isinstance(x_val, LazyRows) and x_train.reader is x_val.reader:
        return replace(x_train, rows=np.concatenate([x_train.rows, x_val.rows])), labels
    raise ValueError("the training and validation rows come from different readers: they cannot be joined for folds")


def mean_history(histories: list[list[EpochRecord]]) -> list[EpochRecord]:
    """The epoch-by-epoch mean of several runs' records, over the epochs every run recorded."""
    if not histories:
        return []
    length = min(len(h) for h in histories)
    merged = []
    for epoch in range(length):
        records = [h[epoch] for h in histories]
        val_losses = [r.val_loss for r in records if r.val_loss is not None]
        names = set.intersection(*(set(r.metrics) for r in records))
        merged.append(
            EpochRecord(
                epoch=epoch,
                train_loss=statistics.fmean(r.train_loss for r in records),
                val_loss=statistics.fmean(val_losses) if len(val_losses) == len(records) else None,
                metrics={name: statistics.fmean(r.metrics[name] for r in records) for name in sorted(names)},
                lr=records[0].lr,
                seconds=sum(r.seconds for r in records),
            )
        )
    return merged


def epochs_from_folds(
    build: ModelFactory,
    x: Features,
    y: np.ndarray,
    hp: HyperParams,
    task: Task,
    max_epochs: int,
    device: torch.device,
    *,
    folds: int,
    seed: int,
    patience: int,
    options: FitOptions,
) -> tuple[int | None, FoldsResult, str]:
    """The epoch count for training on all of `x`: the median of the folds' early-stopped best epochs (None when
    a fold diverged), the folds' result, and the rule in words."""
    chosen = cross_validate(
        build, x, y, hp, task, max_epochs, device,
        folds=folds, seed=seed, options=options, early_stopping_patience=patience,
    )  # fmt: skip
    if chosen.fit.status == "diverged":
        return None, chosen, f"a fold diverged while choosing the epoch count: {chosen.fit.reason}"
    epochs = max(1, round(statistics.median(chosen.best_epochs)) + 1)
    rule = (
        f"small data: {epochs} epochs on the {len(y)} training and validation rows together, the median of the "
        f"best epochs of {folds} folds ({', '.join(str(e + 1) for e in chosen.best_epochs)}; early stopping "
        f"patience {patience}), no early stopping on the final model"
    )
    return epochs, chosen, rule


def fit_all_rows(
    model: nn.Module,
    x: Features,
    y: np.ndarray,
    hp: HyperParams,
    task: Task,
    epochs: int,
    device: torch.device,
    *,
    seed: int,
    options: FitOptions,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> FitResult:
    """Train `model` on all of `x` for exactly `epochs` epochs (no validation rows left to stop on); its last
    epoch counts as the best. The caller seeds the global generator before building `model`."""
    feed = make_train_loader(x, y, hp, task, seed, options.oversample_ratio)
    result = fit(
        model, feed, None, hp, epochs, device, on_epoch=on_epoch, grad_clip_norm=options.grad_clip_norm,
        amp_bf16=options.amp_bf16, max_batches_per_epoch=options.max_batches_per_epoch,
    )  # fmt: skip
    if result.status != "diverged" and result.history:
        result.best_epoch = len(result.history) - 1
    return result
