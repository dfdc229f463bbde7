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
from stagetune.task.base import Task
from stagetune.training.loaders import BatchTransform, TrainFeed
from stagetune.training.optim import build_optimizer

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batches = Iterable[tuple[torch.Tensor, ...]]
FitStatus = Literal["completed", "diverged", "early_stopped", "stopped"]


class StopTraining(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raise from an `on_epoch` callback to end `fit` early with status "stopped" (the message is the reason)."""


@dataclass(frozen=True)
class StepResult:
    """One optimizer step: the batch loss, the task's batch statistics (when asked), batch size, finiteness."""

    loss: float
    size: int
    finite: bool
    sums: torch.Tensor | None = None


@dataclass(frozen=True)
class EpochStats:
    """Sample-weighted mean training loss, the task's training metrics; `finite` False if a batch went NaN/inf."""

    loss: float
    metrics: dict[str, float]
    samples: int
    batches: int
    finite: bool


@dataclass(frozen=True)
class EvalStats:
    """Mean loss over samples, the task's metrics, and (when asked for) the outputs and targets in row order."""

    loss: float
    metrics: dict[str, float]
    samples: int
    finite: bool
    outputs: torch.Tensor | None = None
    targets: torch.Tensor | None = None

    @property
    def accuracy(self) -> float:
        """Classification accuracy (NaN for other tasks)."""
        return self.metrics.get("val/acc", math.nan)

    @property
    def balanced_accuracy(self) -> float:
        """Classification balanced accuracy (NaN for other tasks)."""
        return self.metrics.get("val/balanced_acc", math.nan)

    @property
    def predictions(self) -> np.ndarray | None:
        """Predicted classes (classification, when outputs were kept)."""
        return None if self.outputs is None else self.outputs.argmax(dim=1).numpy()


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
    task: Task | None = None,
) -> StepResult:
    """One forward/backward/update on one batch; a non-finite loss is reported and no update is made.

    With `task`, the task's batch statistics come back too (for the epoch's training metrics). The
    caller puts the model in train mode.
    """
    inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
    with autocast_context(device, amp_bf16):
        outputs = model(inputs)
    outputs = outputs.float()
    if targets.is_floating_point():
        outputs = outputs.reshape(targets.shape)  # a one-output regressor may return (batch,) or (batch, 1)
    loss = loss_fn(outputs, targets)
    # Loss and batch statistics come back to the host together: one synchronisation per step.
    sums = None if task is None else task.batch_sums(outputs.detach(), targets)
    packed = loss.detach().reshape(1) if sums is None else torch.cat([loss.detach().reshape(1), sums])
    host = packed.cpu()
    loss_value = float(host[0])
    if not math.isfinite(loss_value):
        return StepResult(loss_value, len(targets), finite=False)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    optimizer.step()
    return StepResult(loss_value, len(targets), finite=True, sums=None if sums is None else host[1:])


def train_one_epoch(
    model: nn.Module,
    loader: Batches,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    device: torch.device,
    grad_clip_norm: float | None,
    amp_bf16: bool = False,
    max_batches: int | None = None,
    task: Task | None = None,
    augment: BatchTransform | None = None,
) -> EpochStats:
    """One pass over `loader` (at most `max_batches` batches); stops at the first non-finite loss.

    The task (classification when None, judged from integer targets) turns the batch statistics into
    the epoch's training metrics. `augment` transforms each batch once it is on the device.
    """
    model.train()
    total_loss, samples, batches = 0.0, 0, 0
    sums: torch.Tensor | None = None
    for inputs, targets in loader:
        if max_batches is not None and batches >= max_batches:
            break
        if task is None:
            task = _default_task(targets)
        if augment is not None:
            inputs, targets = augment(inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True))
        step = train_step(model, inputs, targets, optimizer, loss_fn, device, grad_clip_norm, amp_bf16, task)
        batches += 1
        if not step.finite:
            return EpochStats(step.loss, {}, samples, batches, finite=False)
        total_loss += step.loss * step.size
        sums = step.sums if sums is None or step.sums is None else sums + step.sums
        samples += step.size
    if samples == 0 or task is None:
        raise ValueError("the training loader yielded no batches")
    metrics = {} if sums is None else task.train_metrics(sums, samples)
    return EpochStats(total_loss / samples, metrics, samples, batches, finite=True)


def _default_task(targets: torch.Tensor) -> Task:
    # Callers that pass no task train a classifier (integer labels) over the classes of its head.
    from stagetune.task.classification import ClassificationTask

    if targets.is_floating_point():
        raise ValueError("float targets need a regression Task: pass task=")
    return ClassificationTask([])


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Batches,
    task: Task,
    device: torch.device,
    amp_bf16: bool = False,
    return_outputs: bool = False,
    prefix: str = "val",
) -> EvalStats:
    """The task's validation loss (the plain mean over samples; class-weighted for a classification task on
    skewed classes) and the task's metrics ("<prefix>/...") in eval mode.

    Outputs stay on the device until the end: one transfer per evaluation, not one per batch.
    """
    model.eval()
    loss_fn = task.eval_loss().to(device)
    total_loss = torch.zeros((), device=device)
    outputs_seen: list[torch.Tensor] = []
    targets_seen: list[torch.Tensor] = []
    samples = 0
    for inputs, targets in loader:
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast_context(device, amp_bf16):
            outputs = model(inputs)
        outputs = outputs.float()
        if targets.is_floating_point():
            outputs = outputs.reshape(targets.shape)
        total_loss += loss_fn(outputs, targets) * len(targets)
        outputs_seen.append(outputs)
        targets_seen.append(targets)
        samples += len(targets)
    if not samples:
        raise ValueError("the evaluation loader yielded no batches")
    all_outputs, all_targets = torch.cat(outputs_seen), torch.cat(targets_seen)
    loss = task.validation_loss(all_outputs, all_targets, total_loss.item() / samples)
    finite = math.isfinite(loss)
    metrics = task.eval_metrics(all_outputs, all_targets, prefix) if finite else {}
    if not return_outputs:
        return EvalStats(loss, metrics, samples, finite)
    return EvalStats(loss, metrics, samples, finite, all_outputs.cpu(), all_targets.cpu())


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

    - The task (`feed.task`) gives the losses and metrics; validation loss is its plain (unweighted)
      loss, so runs with different rebalancing compare (on skewed classes, every class weighing the
      same: `Task.validation_loss`).
    - `feed.augment` (when set) transforms every training batch on the device; validation batches
      are never augmented.
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
    train_loss_fn, task = feed.loss_fn(device), feed.task
    keep_best = keep_best_state or early_stopping_patience is not None
    result = FitResult()

    for epoch in range(epochs):
        started, lr = time.perf_counter(), current_lr(optimizer)
        train = train_one_epoch(
            model,
            feed.loader,
            optimizer,
            train_loss_fn,
            device,
            grad_clip_norm,
            amp_bf16,
            max_batches_per_epoch,
            task,
            feed.augment,  # training batches only: evaluate() below never augments
        )
        if not train.finite:
            reason = f"training loss became {train.loss} at epoch {epoch}, batch {train.batches - 1} (lr {lr:.3g})"
            return _finish(result, model, "diverged", reason)
        val = None if val_loader is None else evaluate(model, val_loader, task, device, amp_bf16)
        if val is not None and not val.finite:
            return _finish(result, model, "diverged", f"validation loss became {val.loss} at epoch {epoch}")
        record = EpochRecord(
            epoch=epoch,
            train_loss=train.loss,
            val_loss=None if val is None else val.loss,
            metrics={**train.metrics, **({} if val is None else val.metrics)},
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
