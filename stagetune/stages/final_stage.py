"""Stage 5: the chosen hyperparameters on the full training data, then one test evaluation, then the registry."""

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from schemas.config import PipelineConfig
from schemas.final import ChampionDecision, FinalResult, RegressionTestMetrics, TestMetrics
from schemas.hyperparams import HyperParams
from schemas.results import EpochRecord, SampleResult
from schemas.stages import Stage
from stagetune import progress
from stagetune.data.augment import build_augmenter, pixels_of
from stagetune.data.fingerprint import arrays_fingerprint
from stagetune.data.source import Features, features_fingerprint_parts
from stagetune.data.stage import StageArrays, load_stage_arrays
from stagetune.diagnosis import diagnose_curves
from stagetune.evaluation import evaluate_on_test
from stagetune.models import build_model
from stagetune.registry import register_and_promote, save_checkpoint
from stagetune.report.figures import confusion_matrix_svg
from stagetune.report.regression_plots import predicted_vs_actual_svg, residual_histogram_svg
from stagetune.search.space import logged_hyperparams
from stagetune.serving.final_model import log_final_model, rescore_champion, version_tags
from stagetune.serving.log_model import check_requirements_early, tracking_uri_set
from stagetune.stages.sanity_stage import epoch_line, skewed
from stagetune.task import Task, full_task_for
from stagetune.tracking.run_tree import (
    RunTree,
    epoch_metric_rows,
    log_metrics,
    log_model_json,
    log_params,
    log_tags,
    stage_run,
)
from stagetune.tracking.svg_curves import learning_curve_svg
from stagetune.tracking.system_metrics import monitored_run
from stagetune.training.device import resolve_device
from stagetune.training.loaders import TrainFeed, load_options, make_eval_loader, make_train_loader
from stagetune.training.loop import FitResult, fit
from stagetune.training.reproducibility import seed_global_generator
from stagetune.training.small_data import FitOptions, final_fit_from_folds, joined

CHECKPOINT_ARTIFACT = "checkpoint/checkpoint.pt"
FACTORY_CHECKPOINT_NOTE = (
    "Weights checkpoint, not a pyfunc model: the data came from a py: Dataset factory, whose samples are "
    "arbitrary tensors, so there is no preprocessing of raw inputs to ship. Load checkpoint.pt with "
    "stagetune.registry.load_checkpoint and feed it tensors as the factory's Dataset returns them."
)


class FinalTrainingError(RuntimeError):
    """The final training produced no usable epoch (exit 1: the search's best point does not train)."""


def final_stage(
    config: PipelineConfig, sample: SampleResult, hp: HyperParams, tree: RunTree, run_dir: Path
) -> FinalResult:
    """Train `hp` on the full training split with early stopping and LR decay; evaluate once on test; register."""
    arrays = load_stage_arrays(sample, load_options(config.execution))
    device = resolve_device(config.execution.device)
    final = config.final
    reporter = progress.current()
    check_requirements_early()  # MLflow's seconds-long check runs while the model trains, not when it is logged
    with stage_run(tree, Stage.FINAL) as run_id, _system_metrics(config, tree, run_id):
        log_params(
            tree.client,
            run_id,
            {**logged_hyperparams(hp, config.model), **{f"final.{k}": v for k, v in final.model_dump().items()}},
        )
        task = full_task_for(sample, config.training.loss)
        model = build_model(
            config.model.family, hp, sample.input_shape, task.output_size, config.model.import_path, seed=config.seed
        )
        feed = make_train_loader(arrays.X_train, arrays.y_train, hp, task, config.seed, config.sample.oversample_ratio)
        augment = build_augmenter(config, hp, feed.task, sample.input_shape, config.seed, pixels_of(sample))
        feed = replace(feed, augment=augment)
        # Weights, data order, dropout and augmentation have streams seeded with config.seed (build_model);
        # the global generator is seeded for randomness in a custom model's own forward only.
        seed_global_generator(config.seed)
        reporter.stage_started(
            Stage.FINAL, f"up to {final.max_epochs} epochs on {len(arrays.y_train)} rows", total=final.max_epochs
        )
        folds, rule = config.search.resolved_cv_folds, None
        if folds > 1:  # small data: epochs from the folds, then train+val without early stopping
            build = partial(build_model, config.model.family, hp, sample.input_shape, task.output_size,
                            config.model.import_path, seed=config.seed)  # fmt: skip
            x, y = joined(arrays.X_train, arrays.y_train, arrays.X_val, arrays.y_val)
            model, outcome, rule = final_fit_from_folds(
                build, x, y, hp, task,
                final.max_epochs, device, folds=folds, seed=config.seed, patience=final.early_stopping_patience,
                options=FitOptions.of(config), on_epoch=lambda r: reporter.stage_advanced(Stage.FINAL, epoch_line(r)),
            )  # fmt: skip
        else:
            progress_line = partial(epoch_line, balanced=skewed(sample))
            outcome = _fit_on_validation(config, model, feed, arrays, hp, task, device, progress_line)
        if outcome.best_epoch is None:
            raise FinalTrainingError(f"final training produced no finite epoch: {outcome.reason}")
        # The model now holds the best validation epoch's weights; the test split is used once, here.
        test = evaluate_on_test(model, arrays.X_test, arrays.y_test, task, device)
        test_fingerprint = arrays_fingerprint(
            {**features_fingerprint_parts("X_test", arrays.X_test), "y_test": arrays.y_test}
        )
        checkpoint = run_dir / Stage.FINAL / "checkpoint.pt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(
            checkpoint,
            model,
            family=config.model.family,
            hp=hp,
            input_shape=sample.input_shape,
            num_classes=task.output_size,
            class_names=sample.class_names if sample.task == "classification" else sample.target_names,
            import_path=config.model.import_path,
            data_fingerprint=test_fingerprint,
            metrics=test if isinstance(test, TestMetrics) else None,
            task_args=None
            if sample.task == "classification"
            else {"task": sample.task, "target_mean": sample.target_mean, "target_std": sample.target_std},
        )
        decision = _register_model(
            tree, run_id, config, sample, checkpoint, arrays.X_test, arrays.y_test, test, test_fingerprint
        )
        result = FinalResult(
            hyperparams=hp,
            epochs_run=len(outcome.history),
            stopped=outcome.status,
            stop_reason=rule or outcome.reason,
            best_epoch=outcome.best_epoch,
            history=outcome.history,
            test=test,
            # Early stopping on validation restored the best epoch (the fold path trains without it).
            diagnosis=diagnose_curves(
                outcome.history,
                outcome.status,
                reference_loss=feed.task.expected_initial_loss(arrays.y_train),
                n_val=None if folds > 1 else len(arrays.y_val),
                kept_best=folds <= 1,
            ),
            checkpoint_artifact=CHECKPOINT_ARTIFACT,
            registry=decision,
            mlflow_run_id=run_id,
        )
        _record(tree, run_id, result)
    reporter.stage_finished(
        Stage.FINAL,
        f"{result.epochs_run} epochs ({result.stopped}); test {test_line(test)}; {decision.model_name} "
        f"v{decision.version} -> {decision.alias}",
    )
    return result


def _register_model(
    tree: RunTree,
    run_id: str,
    config: PipelineConfig,
    sample: SampleResult,
    checkpoint: Path,
    x_test: Features,
    y_test: np.ndarray,
    test: TestMetrics | RegressionTestMetrics,
    test_fingerprint: str,
) -> ChampionDecision:
    """Log the pyfunc model of the final run (tables and image sources), re-score the champion if the test
    data changed, register; a py: factory source registers the weights checkpoint instead."""
    task = full_task_for(sample, config.training.loss)
    metric_name, direction = task.champion_metric(config.final.champion_metric)
    model_name = config.tracking.registered_model or config.name
    tree.client.log_artifact(run_id, str(checkpoint), artifact_path=Path(CHECKPOINT_ARTIFACT).parent.name)
    if sample.source_kind == "factory":
        # A py: factory's samples are whatever tensors the user's Dataset returns: no preprocessing of raw
        # inputs can be rebuilt from them, so the version holds the weights checkpoint.
        decision = register_and_promote(
            tree.client,
            run_id=run_id,
            model_name=model_name,
            model_source=f"runs:/{run_id}/{Path(CHECKPOINT_ARTIFACT).parent.name}",
            metric_name=metric_name,
            metric_value=float(getattr(test, metric_name)),
            data_fingerprint=test_fingerprint,
            pipeline_run_id=tree.parent_run_id,
            higher_is_better=direction == "maximize",
            extra_tags=version_tags(config, tree.parent_run_id, test.summary_metrics()),
        )
        description = f"{decision.reason}. {FACTORY_CHECKPOINT_NOTE}"
        tree.client.update_model_version(model_name, str(decision.version), description=description)
        return decision
    info = log_final_model(tree.client, tree.tracking_uri, run_id, checkpoint, sample, x_test)
    rescored = rescore_champion(
        tree.client, tree.tracking_uri, model_name, fingerprint=test_fingerprint, metric_name=metric_name,
        sample=sample, y_test=y_test, task=task,
    )  # fmt: skip
    with tracking_uri_set(tree.tracking_uri):  # a database store looks `models:/<model_id>` up by it
        decision = register_and_promote(
            tree.client,
            run_id=run_id,
            model_name=model_name,
            model_source=info.model_uri,
            model_id=info.model_id,
            metric_name=metric_name,
            metric_value=float(getattr(test, metric_name)),
            data_fingerprint=test_fingerprint,
            pipeline_run_id=tree.parent_run_id,  # a resumed run reuses the version it registered before a kill
            higher_is_better=direction == "maximize",
            extra_tags=version_tags(config, tree.parent_run_id, test.summary_metrics()),
        )
    if rescored is None:
        return decision
    return decision.model_copy(update={"reason": f"{rescored}; {decision.reason}"})


def _fit_on_validation(
    config: PipelineConfig,
    model: torch.nn.Module,
    feed: TrainFeed,
    arrays: StageArrays,
    hp: HyperParams,
    task: Task,
    device: torch.device,
    line: Callable[[EpochRecord], str],
) -> FitResult:
    """The training split, early stopping and LR decay on the validation split, best epoch kept."""
    final = config.final
    return fit(
        model,
        feed,
        make_eval_loader(arrays.X_val, arrays.y_val, batch_size=1024, task=task),
        hp,
        final.max_epochs,
        device,
        on_epoch=lambda r: progress.current().stage_advanced(Stage.FINAL, line(r)),
        grad_clip_norm=config.training.grad_clip_norm,
        amp_bf16=config.execution.amp_bf16,
        lr_plateau_patience=final.lr_plateau_patience,
        lr_plateau_factor=final.lr_plateau_factor,
        early_stopping_patience=final.early_stopping_patience,
        max_batches_per_epoch=config.training.max_batches_per_epoch,
        keep_best_state=True,
    )


def _record(tree: RunTree, run_id: str, result: FinalResult) -> None:
    client, test = tree.client, result.test
    rows = epoch_metric_rows(result.history)
    step = max(result.epochs_run - 1, 0)
    for name, value in test.summary_metrics().items():
        rows.append((f"test/{name}", value, step))
    log_metrics(client, run_id, [row for row in rows if math.isfinite(row[1])])
    log_tags(
        client,
        run_id,
        {
            "stagetune.diagnosis": result.diagnosis.code,
            "stagetune.stopped": result.stopped,
            "stagetune.best_epoch": str(result.best_epoch),
        },
    )
    log_model_json(client, run_id, result, "results/final.json")
    client.log_text(run_id, learning_curve_svg(result.history, "final training"), "plots/learning_curve.svg")
    if isinstance(test, TestMetrics):
        client.log_text(run_id, confusion_matrix_svg(test), "plots/confusion_matrix.svg")
    else:
        client.log_text(run_id, predicted_vs_actual_svg(test), "plots/predicted_vs_actual.svg")
        client.log_text(run_id, residual_histogram_svg(test), "plots/residuals.svg")


def test_line(test: TestMetrics | RegressionTestMetrics) -> str:
    """The test metrics in one line, per task."""
    if isinstance(test, TestMetrics):
        return f"accuracy {test.accuracy:.4f}, balanced {test.balanced_accuracy:.4f}, macro F1 {test.macro_f1:.4f}"
    return f"R² {test.r2:.4f}, RMSE {test.rmse:.4g}, MAE {test.mae:.4g}"


def _system_metrics(config: PipelineConfig, tree: RunTree, run_id: str) -> AbstractContextManager[None]:
    """MLflow's system-metrics monitor on the final run (or nothing, with tracking.system_metrics off)."""
    if not config.tracking.system_metrics:
        return nullcontext()
    return monitored_run(tree.tracking_uri, run_id, config.tracking.system_metrics_interval)
