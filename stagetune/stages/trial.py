"""One search trial: train the trial's hyperparameters, report each epoch, record it as an MLflow run.

The tuner is reached only through `report(epoch, value) -> should_prune`; the trial never sees an
Optuna object, so the same function serves any sampler, pruner or executor.

A trial makes three tracking calls around its training: the run is created with its tags, one
`log_batch` carries its params, metrics and outcome tags, and the run is ended. Its learning-curve
PNG (~0.1-0.3 s of matplotlib CPU here) goes to the stage's `BackgroundFigures` thread when the
stage provides one (`TrialContext.figures`), off the trial's critical path; otherwise it is drawn
in line.
"""

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

from schemas.config import PipelineConfig
from schemas.hyperparams import HyperParams
from schemas.results import EpochRecord
from schemas.search import TrialRecord
from stagetune.diagnosis import diagnose_curves
from stagetune.errors import InputError
from stagetune.tracking.plots import BackgroundFigures, learning_curve_figure
from stagetune.tracking.run_tree import (
    RunTree,
    Stage,
    end_run,
    epoch_metric_rows,
    log_metrics,
    log_params,
    log_tags,
    now_ms,
)
from stagetune.training.device import resolve_device
from stagetune.training.loaders import make_eval_loader, make_train_loader
from stagetune.training.loop import FitResult, StopTraining, fit
from stagetune.training.models import build_model

Objective = Literal["val_loss", "val_acc", "val_balanced_acc"]
Reporter = Callable[[int, float], bool]


@dataclass(frozen=True)
class TrialData:
    """The arrays every trial of a stage trains and validates on (loaded once per stage)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    input_shape: list[int]
    num_classes: int


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
    # The stage's PNG thread; None draws in line (the stage must drain it before ending its run).
    figures: BackgroundFigures | None = None


def objective_value(record: EpochRecord, objective: Objective) -> float:
    """The epoch's value of the tuning objective (NaN when the epoch has no validation)."""
    value = getattr(record, objective)
    return math.nan if value is None else float(value)


def best_value(history: list[EpochRecord], objective: Objective) -> float | None:
    """The best epoch's objective value: the lowest loss or the highest accuracy."""
    values = [v for v in (objective_value(r, objective) for r in history) if math.isfinite(v)]
    if not values:
        return None
    return min(values) if objective == "val_loss" else max(values)


def run_trial(
    context: TrialContext, number: int, hp: HyperParams, params: Mapping[str, object], report: Reporter
) -> TrialRecord:
    """Train one trial and record it; a diverging or crashing trial comes back as FAIL, not an exception.

    Invalid settings (an `InputError`, e.g. a batch smaller than the class count for balanced
    batches) propagate: they are the user's to fix, not a property of the trial.
    """
    config, client = context.config, context.tree.client
    run_id = context.tree.start_trial(context.stage_run_id, context.stage, number, context.study_name)
    run_params = {**hp.model_dump(mode="json"), "epochs": context.epochs, "seed": config.seed + number}
    run_params |= {f"optuna.{k}": v for k, v in params.items()}
    history: list[EpochRecord] = []
    try:
        outcome = _train(context, number, hp, report, history)
    except InputError:
        log_params(client, run_id, run_params)
        end_run(client, run_id, "FAILED")
        raise
    except Exception as error:  # e.g. CUDA out of memory: the trial fails, the study goes on
        outcome = FitResult(history=history, status="diverged", reason=f"{type(error).__name__}: {error}")
        outcome_state = "FAIL"
    else:
        outcome_state = {"completed": "COMPLETE", "early_stopped": "COMPLETE", "stopped": "PRUNED"}.get(
            outcome.status, "FAIL"
        )
    value = best_value(outcome.history, config.search.objective)
    if outcome_state == "COMPLETE" and value is None:
        outcome_state, outcome.reason = "FAIL", "no finite validation value"
    if outcome_state == "PRUNED":
        value = objective_value(outcome.history[-1], config.search.objective) if outcome.history else None
    diagnosis = diagnose_curves(outcome.history, outcome.status)
    record = TrialRecord(
        number=number,
        state=outcome_state,
        value=value,
        hyperparams=hp,
        params=dict(params),
        epochs_run=len(outcome.history),
        fail_reason=outcome.reason if outcome_state == "FAIL" else None,
        mlflow_run_id=run_id,
        diagnosis=diagnosis.code,
    )
    _record(context, client, run_id, record, run_params, outcome.history, outcome.reason)
    return record


def _train(
    context: TrialContext, number: int, hp: HyperParams, report: Reporter, history: list[EpochRecord]
) -> FitResult:
    config, data = context.config, context.data
    device = resolve_device(config.execution.device)
    seed = config.seed + number
    torch.manual_seed(seed)
    model = build_model(
        config.model.family, hp, data.input_shape, data.num_classes, config.model.import_path, seed=seed
    )
    feed = make_train_loader(data.x_train, data.y_train, hp, data.num_classes, seed, config.sample.oversample_ratio)
    val_loader = make_eval_loader(data.x_val, data.y_val, batch_size=1024)

    def on_epoch(record: EpochRecord) -> None:
        history.append(record)
        if report(record.epoch, objective_value(record, config.search.objective)):
            raise StopTraining(f"pruned after epoch {record.epoch}")

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


def _record(
    context: TrialContext,
    client: MlflowClient,
    run_id: str,
    record: TrialRecord,
    params: Mapping[str, object],
    history: list[EpochRecord],
    reason: str | None,
) -> None:
    rows = epoch_metric_rows(history)
    if record.value is not None:
        rows.append(("objective", record.value, max(record.epochs_run - 1, 0)))
    tags = {"stagetune.state": record.state, "stagetune.diagnosis": record.diagnosis or ""}
    if reason:
        tags["stagetune.reason"] = reason[:5000]
    log_trial_batch(client, run_id, params, [row for row in rows if math.isfinite(row[1])], tags)
    end_run(client, run_id, "FAILED" if record.state == "FAIL" else "FINISHED")
    if history and context.config.tracking.trial_plots:
        title = f"{context.stage} trial {record.number} ({record.state})"
        curves = tuple(history)
        figures = context.figures or BackgroundFigures(background=False)
        figures.log(client, run_id, lambda: learning_curve_figure(curves, title), "plots/learning_curve.png")


def log_trial_batch(
    client: MlflowClient,
    run_id: str,
    params: Mapping[str, object],
    rows: Sequence[tuple[str, float, int]],
    tags: Mapping[str, str],
) -> None:
    """A finished trial's params, (name, value, step) metric rows and tags in one `log_batch` call;
    in several (each within MLflow's per-call limits) only for a trial too long for one."""
    fits = (
        max(len(params), len(tags)) <= MAX_PARAMS_TAGS_PER_BATCH
        and len(rows) <= MAX_METRICS_PER_BATCH
        and len(params) + len(tags) + len(rows) <= MAX_ENTITIES_PER_BATCH
    )
    if not fits:
        log_params(client, run_id, params)
        log_metrics(client, run_id, rows)
        log_tags(client, run_id, tags)
        return
    timestamp = now_ms()
    client.log_batch(
        run_id,
        metrics=[Metric(name, float(value), timestamp, step) for name, value, step in rows],
        params=[Param(key, _param_text(value)) for key, value in params.items()],
        tags=[RunTag(key, value) for key, value in tags.items()],
        synchronous=True,
    )


def _param_text(value: Any) -> str:
    # As run_tree.log_params writes a param: strings as they are, anything else as JSON, cut to MLflow's limit.
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:MAX_PARAM_VAL_LENGTH]
