"""The one training step, epoch loop and evaluation that the sanity gate, the searches and the final run share.

Nothing here knows about a tuner or a tracker: progress goes out through the `on_epoch` callback of
`fit`, which may raise to stop the run (e.g. a pruning exception, which propagates unchanged, or
StopTraining, which ends the run with status "stopped").
"""

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from schemas.hyperparams import HyperParams
from schemas.results import EpochRecord
from stagetune.training.loaders import TrainFeed
from stagetune.training.optim import build_optimizer

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batches = Iterable[tuple[torch.Tensor, ...]]
FitStatus = Literal["completed", "diverged", "early_stopped", "stopped"]


class StopTraining(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raise from an `on_epoch` callback to end `fit` early with status "stopped" (the message is the reason)."""


@dataclass(frozen=True)
class StepResult:
    """One optimizer step: the batch loss, correct predictions, batch size, and whether the loss was finite."""

    loss: float
    correct: int
    size: int
    finite: bool


@dataclass(frozen=True)
class EpochStats:
    """Sample-weighted mean training loss and accuracy of the batches run; `finite` False if one went NaN/inf."""

    loss: float
    accuracy: float
    samples: int
    batches: int
    finite: bool


@dataclass(frozen=True)
class EvalStats:
    """Mean loss over samples, accuracy, balanced accuracy, and the predicted classes when asked for."""

    loss: float
    accuracy: float
    samples: int
    finite: bool
    predictions: np.ndarray | None = None
    balanced_accuracy: float = math.nan


@dataclass
class FitResult:
    """What `fit` did: per-epoch history, how it ended and why, and the best validation epoch."""

    history: list[EpochRecord] = field(default_factory=list)
    status: FitStatus = "completed"
    reason: str | None = None
    best_val_loss: float | None = None
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None


def autocast_context(device: torch.device, amp_bf16: bool) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CUDA when asked for; a no-op elsewhere."""
    if amp_bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    device: torch.device,
    grad_clip_norm: float | None = None,
    amp_bf16: bool = False,
) -> StepResult:
    """One forward/backward/update on one batch; a non-finite loss is reported and no update is made.

    The caller puts the model in train mode.
    """
    inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
    with autocast_context(device, amp_bf16):
        logits = model(inputs)
    loss = loss_fn(logits.float(), targets)
    # Loss and correct count come back to the host together: one synchronisation per step.
    loss_value, correct = torch.stack([loss.detach(), (logits.argmax(dim=1) == targets).sum().float()]).tolist()
    if not math.isfinite(loss_value):
        return StepResult(loss_value, 0, len(targets), finite=False)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    optimizer.step()
    return StepResult(loss_value, int(correct), len(targets), finite=True)


def train_one_epoch(
    model: nn.Module,
    loader: Batches,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    device: torch.device,
    grad_clip_norm: float | None,
    amp_bf16: bool = False,
    max_batches: int | None = None,
) -> EpochStats:
    """One pass over `loader` (at most `max_batches` batches); stops at the first non-finite loss."""
    model.train()
    total_loss, correct, samples, batches = 0.0, 0, 0, 0
    for inputs, targets in loader:
        if max_batches is not None and batches >= max_batches:
            break
        step = train_step(model, inputs, targets, optimizer, loss_fn, device, grad_clip_norm, amp_bf16)
        batches += 1
        if not step.finite:
            return EpochStats(step.loss, correct / max(samples, 1), samples, batches, finite=False)
        total_loss += step.loss * step.size
        correct += step.correct
        samples += step.size
    if samples == 0:
        raise ValueError("the training loader yielded no batches")
    return EpochStats(total_loss / samples, correct / samples, samples, batches, finite=True)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Batches,
    loss_fn: LossFn,
    device: torch.device,
    amp_bf16: bool = False,
    return_predictions: bool = False,
) -> EvalStats:
    """Mean loss over samples, accuracy and balanced accuracy (mean per-class recall over the classes
    present) in eval mode; `loss_fn` must average over its batch."""
    model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    per_class_total: torch.Tensor | None = None
    per_class_hit: torch.Tensor | None = None
    samples = 0
    predictions: list[torch.Tensor] = []
    for inputs, targets in loader:
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast_context(device, amp_bf16):
            logits = model(inputs)
        predicted = logits.argmax(dim=1)
        total_loss += loss_fn(logits.float(), targets) * len(targets)
        hits = predicted == targets
        correct += hits.sum()
        classes = logits.shape[1]
        totals = torch.bincount(targets, minlength=classes)
        hit_counts = torch.bincount(targets[hits], minlength=classes)
        per_class_total = totals if per_class_total is None else per_class_total + totals
        per_class_hit = hit_counts if per_class_hit is None else per_class_hit + hit_counts
        samples += len(targets)
        if return_predictions:
            predictions.append(predicted.cpu())
    if per_class_total is None or per_class_hit is None:
        raise ValueError("the evaluation loader yielded no batches")
    loss = total_loss.item() / samples
    predicted_all = torch.cat(predictions).numpy() if return_predictions else None
    present = per_class_total > 0
    balanced = (per_class_hit[present].float() / per_class_total[present].float()).mean().item()
    return EvalStats(loss, correct.item() / samples, samples, math.isfinite(loss), predicted_all, balanced)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """Learning rate of the first parameter group."""
    return float(optimizer.param_groups[0]["lr"])


def snapshot_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's state dict, safe from later updates."""
    return {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}


def fit(
    model: nn.Module,
    feed: TrainFeed,
    val_loader: Batches | None,
    hp: HyperParams,
    epochs: int,
    device: torch.device,
    *,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    grad_clip_norm: float | None = 5.0,
    amp_bf16: bool = False,
    lr_plateau_patience: int | None = None,
    lr_plateau_factor: float = 0.5,
    early_stopping_patience: int | None = None,
    max_batches_per_epoch: int | None = None,
    keep_best_state: bool = False,
) -> FitResult:
    """Train `model` for up to `epochs` epochs with the optimizer of `hp`, validating after each epoch.

    - Validation loss is plain (unweighted) cross-entropy, so runs with different rebalancing compare.
    - `lr_plateau_patience`: multiply the LR by `lr_plateau_factor` when validation loss has not
      improved for more than that many epochs (ReduceLROnPlateau).
    - `early_stopping_patience`: stop once validation loss has not improved for that many epochs.
    - The best epoch's weights are kept with early stopping or `keep_best_state`; then the model
      ends holding them, whatever the status.
    - Status "diverged" when a training or validation loss goes NaN/inf (the epoch is not recorded);
      "stopped" when `on_epoch` raises StopTraining. Any other exception from `on_epoch` propagates.
    """
    if val_loader is None and (lr_plateau_patience is not None or early_stopping_patience is not None):
        raise ValueError("LR plateau decay and early stopping need a validation loader")
    model.to(device)
    optimizer = build_optimizer(hp, model.parameters())
    scheduler = None
    if lr_plateau_patience is not None:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=lr_plateau_factor, patience=lr_plateau_patience
        )
    train_loss_fn, val_loss_fn = feed.loss_fn(device), nn.CrossEntropyLoss()
    keep_best = keep_best_state or early_stopping_patience is not None
    result = FitResult()

    for epoch in range(epochs):
        started, lr = time.perf_counter(), current_lr(optimizer)
        train = train_one_epoch(
            model, feed.loader, optimizer, train_loss_fn, device, grad_clip_norm, amp_bf16, max_batches_per_epoch
        )
        if not train.finite:
            reason = f"training loss became {train.loss} at epoch {epoch}, batch {train.batches - 1} (lr {lr:.3g})"
            return _finish(result, model, "diverged", reason)
        val = None if val_loader is None else evaluate(model, val_loader, val_loss_fn, device, amp_bf16)
        if val is not None and not val.finite:
            return _finish(result, model, "diverged", f"validation loss became {val.loss} at epoch {epoch}")
        record = EpochRecord(
            epoch=epoch,
            train_loss=train.loss,
            train_acc=train.accuracy,
            val_loss=None if val is None else val.loss,
            val_acc=None if val is None else val.accuracy,
            val_balanced_acc=None if val is None else val.balanced_accuracy,
            lr=lr,
            seconds=time.perf_counter() - started,
        )
        result.history.append(record)
        if val is not None and (result.best_val_loss is None or val.loss < result.best_val_loss):
            result.best_val_loss, result.best_epoch = val.loss, epoch
            result.best_state = snapshot_state(model) if keep_best else None
        if on_epoch is not None:
            try:
                on_epoch(record)
            except StopTraining as stop:
                return _finish(result, model, "stopped", str(stop) or f"stopped by the callback after epoch {epoch}")
        if scheduler is not None and val is not None:
            scheduler.step(val.loss)
        best_epoch = result.best_epoch
        if (
            early_stopping_patience is not None
            and best_epoch is not None
            and epoch - best_epoch >= early_stopping_patience
        ):
            reason = (
                f"no validation improvement for {early_stopping_patience} epochs "
                f"(best {result.best_val_loss:.4g} at epoch {best_epoch})"
            )
            return _finish(result, model, "early_stopped", reason)
    return _finish(result, model, "completed", None)


def _finish(result: FitResult, model: nn.Module, status: FitStatus, reason: str | None) -> FitResult:
    if result.best_state is not None:
        model.load_state_dict(result.best_state)
    result.status, result.reason = status, reason
    return result
