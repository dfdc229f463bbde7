"""One search trial: train the trial's hyperparameters, report each epoch, record it as an MLflow run.

The tuner is reached only through `report(epoch, value) -> should_prune`; the trial never sees an
Optuna object, so the same function serves any sampler, pruner or executor.

A trial makes three tracking calls around its training: the run is created with its tags (and its
real start time), one `log_batch` carries its params, metrics and outcome tags, and the run is ended
(with its real end time); then its learning curves are logged as an SVG plot. When the stage gives its
trials a background `TrackingQueue` (`TrialContext.tracking`), all of that runs on the queue's
thread, in that order, while the search loop goes on: the trial only waits for its run to exist
(created while it trained) so that its record can name the run. The stage drains the queue before
it ends its own run. Without a queue (a `stagetune worker`, a Dask worker) the calls run in line.
"""

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

import numpy as np
from mlflow.tracking import MlflowClient

from schemas.config import TASK_OBJECTIVES, PipelineConfig
from schemas.hyperparams import HyperParams
from schemas.results import EpochRecord
from schemas.search import TrialRecord
from stagetune.data.augment import PixelScaling, build_augmenter
from stagetune.data.source import Features
from stagetune.diagnosis import diagnose_curves
from stagetune.errors import InputError
from stagetune.interruption import INTERRUPTED_REASON, TrialInterrupted, stop_requested
from stagetune.models import build_model
from stagetune.search.space import logged_hyperparams
from stagetune.task.base import Task
from stagetune.tracking.background import TrackingQueue
from stagetune.tracking.run_tree import (
    RunEnd,
    RunTree,
    Stage,
    end_run,
    epoch_metric_rows,
    log_params,
    log_record,
    now_ms,
)
from stagetune.tracking.svg_curves import learning_curve_svg
from stagetune.tracking.system_metrics import trial_sampler
from stagetune.training.device import resolve_device
from stagetune.training.loaders import make_eval_loader, make_train_loader
from stagetune.training.loop import FitResult, StopTraining, fit
from stagetune.training.reproducibility import seed_global_generator, stream_seed, use_deterministic_algorithms
from stagetune.training.small_data import FitOptions, cross_validate, joined

LOGGER = logging.getLogger(__name__)

Objective = Literal["val_loss", "val_acc", "val_balanced_acc", "val_rmse", "val_mae", "val_r2"]
Reporter = Callable[[int, float], bool]


@dataclass(frozen=True)
class TrialData:
    """The arrays every trial of a stage trains and validates on (loaded once per stage)."""

    x_train: Features
    y_train: np.ndarray
    x_val: Features
    y_val: np.ndarray
    input_shape: list[int]
    task: Task
    pixels: PixelScaling | None = None
    """How Stage 1 standardised image pixels (augmentation flips and shifts in pixel units)."""


@dataclass(frozen=True)
class TrialContext:
    """What is the same for every trial of a stage."""

    config: PipelineConfig
    tree: RunTree
    stage: Stage
    stage_run_id: str
    study_name: str
    epochs: int
    data: TrialData
    # The stage's background tracking thread; None: tracking calls run in line (the stage drains it
    # before ending its run).
    tracking: TrackingQueue | None = None


def objective_value(record: EpochRecord, objective: Objective) -> float:
    """The epoch's value of the tuning objective (NaN when the epoch has no validation)."""
    value = record.val_loss if objective == "val_loss" else record.metric(objective)
    return math.nan if value is None else float(value)


def best_value(history: list[EpochRecord], objective: Objective) -> float | None:
    """The best epoch's objective value: the lowest loss/RMSE/MAE or the highest accuracy/R²."""
    values = [v for v in (objective_value(r, objective) for r in history) if math.isfinite(v)]
    if not values:
        return None
    lower_is_better = any(table.get(objective, False) for table in TASK_OBJECTIVES.values())
    return min(values) if lower_is_better else max(values)


def run_trial(
    context: TrialContext, number: int, hp: HyperParams, params: Mapping[str, object], report: Reporter
) -> TrialRecord:
    """Train one trial and record it; a diverging or crashing trial comes back as FAIL, not an exception.

    Invalid settings (an `InputError`, e.g. a batch smaller than the class count for balanced
    batches) propagate: they are the user's to fix, not a property of the trial.
    """
    config, client = context.config, context.tree.client
    tracking = context.tracking or TrackingQueue(background=False)
    started = now_ms()
    created = tracking.submit(
        lambda: context.tree.start_trial(context.stage_run_id, context.stage, number, context.study_name, started)
    )
    run_params = trial_run_params(context, number, hp, params)
    history: list[EpochRecord] = []
    try:
        outcome = _train(context, number, hp, report, history)
    except TrialInterrupted:
        # The search stopped (Ctrl-C, SIGTERM, an error): FAIL, retried on resume; its run ends KILLED.
        outcome = FitResult(history=history, status="stopped", reason=INTERRUPTED_REASON)
        outcome_state = "FAIL"
    except InputError:
        run_id = created.result()
        tracking.submit(lambda: _end_invalid(client, run_id, run_params))
        raise
    except Exception as error:  # e.g. CUDA out of memory: the trial fails, the study goes on
        outcome = FitResult(history=history, status="diverged", reason=f"{type(error).__name__}: {error}")
        outcome_state = "FAIL"
    else:
        outcome_state = {"completed": "COMPLETE", "early_stopped": "COMPLETE", "stopped": "PRUNED"}.get(
            outcome.status, "FAIL"
        )
    ended = now_ms()
    system = _system_rows(config, started, ended)
    value = best_value(outcome.history, config.search.resolved_objective)
    if outcome_state == "COMPLETE" and value is None:
        outcome_state, outcome.reason = "FAIL", "no finite validation value"
    if outcome_state == "PRUNED":
        value = objective_value(outcome.history[-1], config.search.resolved_objective) if outcome.history else None
    diagnosis = diagnose_curves(
        outcome.history,
        outcome.status,
        reference_loss=reference_loss(context.data, hp),
        n_val=len(context.data.y_val),  # the noise band of a validation-loss rise or gap
    )
    record = TrialRecord(
        number=number,
        state=outcome_state,
        value=value,
        hyperparams=hp,
        params=dict(params),
        epochs_run=len(outcome.history),
        fail_reason=outcome.reason if outcome_state == "FAIL" else None,
        mlflow_run_id=created.result(),  # created while the trial trained: normally no wait
        diagnosis=diagnosis.code,
    )
    reason = outcome.reason
    # Held until the search loop has started the next trial: it then overlaps that trial's training.
    tracking.submit(
        lambda: _record(context, client, record, run_params, outcome.history, reason, ended, system), held=True
    )
    return record


def reference_loss(data: TrialData, hp: HyperParams) -> float | None:
    """The loss the trial's model starts from (ln C; the zero-output value of its regression loss): the
    scale the curve diagnosis reads train vs validation loss against. None for a loss the task refuses
    (the trial then failed in training already)."""
    try:
        return data.task.with_loss(hp.loss).expected_initial_loss(data.y_train)
    except ValueError:
        return None


def trial_run_params(
    context: TrialContext, number: int, hp: HyperParams, params: Mapping[str, object]
) -> dict[str, object]:
    """The params of a trial's MLflow run: its hyperparameters, epochs, seed and the Optuna params."""
    run_params: dict[str, object] = {
        **logged_hyperparams(hp, context.config.model),
        "epochs": context.epochs,
        "seed": trial_seed(context.config.seed, context.stage, number),
    }
    return run_params | {f"optuna.{k}": v for k, v in params.items()}


def trial_seed(seed: int, stage: Stage, number: int) -> int:
    """The seed of every random stream of trial `number` of `stage` in a run seeded with `seed`."""
    return stream_seed(seed, stage, number)


def _train(
    context: TrialContext, number: int, hp: HyperParams, report: Reporter, history: list[EpochRecord]
) -> FitResult:
    config, data = context.config, context.data
    device = resolve_device(config.execution.device)
    use_deterministic_algorithms(config.execution.deterministic)  # a worker or Dask process runs no flow to set it
    seed = trial_seed(config.seed, context.stage, number)
    # Weights, data order, dropout masks and augmentation draw from streams seeded with `seed` (see
    # build_model): the trial gives the same values alone or beside others in threads. The global
    # generator is seeded only for randomness in a custom model's own forward, which the trial's
    # streams cannot reach (exact with execution.concurrency 1).
    seed_global_generator(seed)
    model = build_model(
        config.model.family, hp, data.input_shape, data.task.output_size, config.model.import_path, seed=seed
    )
    feed = make_train_loader(data.x_train, data.y_train, hp, data.task, seed, config.sample.oversample_ratio)
    feed = replace(feed, augment=build_augmenter(config, hp, feed.task, data.input_shape, seed, data.pixels))
    val_loader = make_eval_loader(data.x_val, data.y_val, batch_size=1024, task=data.task)

    def on_epoch(record: EpochRecord) -> None:
        history.append(record)
        if stop_requested(context.stage_run_id):
            raise TrialInterrupted(INTERRUPTED_REASON)
        if report(record.epoch, objective_value(record, config.search.resolved_objective)):
            raise StopTraining(f"pruned after epoch {record.epoch}")

    folds = config.search.resolved_cv_folds
    if folds > 1:  # small data: the trial's curve is the mean of k folds (stagetune.training.small_data)
        x, y = joined(data.x_train, data.y_train, data.x_val, data.y_val)
        build = partial(build_model, config.model.family, hp, data.input_shape, data.task.output_size,
                        config.model.import_path, seed=seed)  # fmt: skip
        return cross_validate(
            build, x, y, hp, data.task, context.epochs, device,
            folds=folds, seed=seed, options=FitOptions.of(config), on_epoch=on_epoch,
        ).fit  # fmt: skip
    return fit(
        model,
        feed,
        val_loader,
        hp,
        context.epochs,
        device,
        on_epoch=on_epoch,
        grad_clip_norm=config.training.grad_clip_norm,
        amp_bf16=config.execution.amp_bf16,
        max_batches_per_epoch=config.training.max_batches_per_epoch,
    )


def _system_rows(config: PipelineConfig, started_ms: int, ended_ms: int) -> list[tuple[str, float, int]]:
    """The machine's readings while the trial trained (see `stagetune.tracking.system_metrics`)."""
    if not config.tracking.system_metrics:
        return []
    try:
        sampler = trial_sampler(config.tracking.system_metrics_interval)
        return sampler.rows(started_ms / 1000, ended_ms / 1000)
    except Exception as error:  # a trial's result matters more than its system metrics
        LOGGER.warning("system metrics were not read: %s", error)
        return []


def _end_invalid(client: MlflowClient, run_id: str, params: Mapping[str, object]) -> None:
    log_params(client, run_id, params)
    end_run(client, run_id, "FAILED")


def _record(
    context: TrialContext,
    client: MlflowClient,
    record: TrialRecord,
    params: Mapping[str, object],
    history: list[EpochRecord],
    reason: str | None,
    ended_ms: int,
    system: Sequence[tuple[str, float, int]] = (),
) -> None:
    run_id = record.mlflow_run_id or ""
    rows = epoch_metric_rows(history) + list(system)
    if record.value is not None:
        rows.append(("objective", record.value, max(record.epochs_run - 1, 0)))
    tags = {"stagetune.state": record.state, "stagetune.diagnosis": record.diagnosis or ""}
    if reason:
        tags["stagetune.reason"] = reason[:5000]
    log_record(client, run_id, params, [row for row in rows if math.isfinite(row[1])], tags)
    status: RunEnd = "FAILED" if record.state == "FAIL" else "FINISHED"
    end_run(client, run_id, "KILLED" if reason == INTERRUPTED_REASON else status, ended_ms)
    if history and context.config.tracking.trial_plots:
        title = f"{context.stage} trial {record.number} ({record.state})"
        client.log_text(run_id, learning_curve_svg(history, title), "plots/learning_curve.svg")
