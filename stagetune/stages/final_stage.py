"""Stage 5: the chosen hyperparameters on the full training data, then one test evaluation, then the registry."""

import math
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from pathlib import Path

import numpy as np

from schemas.config import PipelineConfig
from schemas.final import ChampionDecision, FinalResult, RegressionTestMetrics, TestMetrics
from schemas.hyperparams import HyperParams
from schemas.results import SampleResult
from schemas.stages import Stage
from stagetune import progress
from stagetune.data.fingerprint import arrays_fingerprint
from stagetune.data.source import Features, features_fingerprint_parts
from stagetune.data.stage import load_stage_arrays
from stagetune.diagnosis import diagnose_curves
from stagetune.evaluation import evaluate_on_test
from stagetune.registry import register_and_promote, save_checkpoint
from stagetune.report.figures import confusion_matrix_svg
from stagetune.report.regression_plots import predicted_vs_actual_svg, residual_histogram_svg
from stagetune.search.space import logged_hyperparams
from stagetune.serving.final_model import log_final_model, rescore_champion, version_tags
from stagetune.serving.log_model import check_requirements_early, tracking_uri_set
from stagetune.stages.final_members import train_final_members
from stagetune.stages.sanity_stage import epoch_line, skewed
from stagetune.task import full_task_for
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
from stagetune.training.loaders import load_options

CHECKPOINT_ARTIFACT = "checkpoint/checkpoint.pt"
FACTORY_CHECKPOINT_NOTE = (
    "Weights checkpoint, not a pyfunc model: the data came from a py: Dataset factory, whose samples are "
    "arbitrary tensors, so there is no preprocessing of raw inputs to ship. Load checkpoint.pt with "
    "stagetune.registry.load_checkpoint and feed it tensors as the factory's Dataset returns them."
)


class FinalTrainingError(RuntimeError):
    """The final training produced no usable epoch (exit 1: the search's best point does not train)."""


def final_stage(
    config: PipelineConfig,
    sample: SampleResult,
    hp: HyperParams,
    tree: RunTree,
    run_dir: Path,
    search_compute: float = 0.0,
) -> FinalResult:
    """Train `hp` on the full training split with early stopping and LR decay; evaluate once on test; register.

    `search_compute`: the search's training in row-epochs (`final_members.search_row_epochs`), which bounds
    the ensemble's members after the first (`final.ensemble_budget`); 0: one network."""
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
        members = config.final.ensemble
        reporter.stage_started(
            Stage.FINAL,
            f"up to {final.max_epochs} epochs on {len(arrays.y_train)} rows"
            + (f", up to {members} networks (final.ensemble)" if members > 1 else ""),
            total=final.max_epochs * members,
        )
        line = partial(epoch_line, balanced=skewed(sample))
        trained = train_final_members(
            config, sample, arrays, hp, task, device, search_compute,
            lambda index, record: reporter.stage_advanced(Stage.FINAL, _member_line(index, members, line(record))),
        )  # fmt: skip
        folds, rule, outcome = config.search.resolved_cv_folds, trained.rule, trained.first.fit
        if outcome.best_epoch is None:
            raise FinalTrainingError(f"final training produced no finite epoch: {outcome.reason}")
        model = trained.model(classifier=sample.task == "classification")
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
            ensemble_members=len(trained.members),
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
                reference_loss=task.with_loss(hp.loss).expected_initial_loss(arrays.y_train),  # the trained loss
                n_val=None if folds > 1 else len(arrays.y_val),
                kept_best=folds <= 1,
            ),
            checkpoint_artifact=CHECKPOINT_ARTIFACT,
            registry=decision,
            mlflow_run_id=run_id,
            members=[member.summary() for member in trained.members],
            ensemble_rule=trained.size_rule,
        )
        _record(tree, run_id, result)
    reporter.stage_finished(
        Stage.FINAL,
        f"{_epochs_line(result, len(trained.left_out), config.final.ensemble)}; test {test_line(test)}; "
        f"{decision.model_name} v{decision.version} -> {decision.alias}",
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


def _member_line(index: int, members: int, line: str) -> str:
    """The progress line of one member's epoch (prefixed with the member when there are several)."""
    return line if members == 1 else f"network {index + 1}/{members}: {line}"


def _epochs_line(result: FinalResult, left_out: int, requested: int) -> str:
    """How the final training ended, in a few words: one network's epochs, or every member's."""
    trained = len(result.members) + left_out
    limited = f", {trained} of up to {requested} within final.ensemble_budget" if trained < requested else ""
    if len(result.members) <= 1 and not left_out:
        return f"{result.epochs_run} epochs ({result.stopped}{limited})"
    epochs = ", ".join(str(member.epochs_run) for member in result.members)
    dropped = f", {left_out} diverged and left out" if left_out else ""
    return f"ensemble of {len(result.members)} networks ({epochs} epochs{dropped}{limited})"


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
