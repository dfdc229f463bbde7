"""Stage 2 in MLflow: the sanity gate, then a short baseline fit of the configured hyperparameters."""

import math
from dataclasses import replace

from mlflow.tracking import MlflowClient

from schemas.config import PipelineConfig
from schemas.results import BaselineFit, EpochRecord, SampleResult, SanityResult
from schemas.stages import Stage
from stagetune import progress
from stagetune.data.augment import build_augmenter, pixels_of
from stagetune.data.stage import StageArrays, load_stage_arrays
from stagetune.models import build_model
from stagetune.report.figures import lr_range_svg, overfit_svg
from stagetune.sanity import run_sanity_gate
from stagetune.search.space import logged_hyperparams
from stagetune.task import Task, task_for
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
from stagetune.training.device import resolve_device
from stagetune.training.loaders import load_options, make_eval_loader, make_train_loader
from stagetune.training.loop import fit


def sanity_stage(config: PipelineConfig, sample: SampleResult, tree: RunTree) -> SanityResult:
    """Run the gate on the sampled training data; when it passes, fit the baseline briefly."""
    arrays = load_stage_arrays(sample, load_options(config.execution))
    task = task_for(sample, config.training.loss)
    device = resolve_device(config.execution.device)
    reporter = progress.current()
    with stage_run(tree, Stage.SANITY) as run_id:
        reporter.stage_started(Stage.SANITY, "initial loss, overfit test, LR range test")
        result = run_sanity_gate(
            arrays.X_train_sampled,
            arrays.y_train_sampled,
            family=config.model.family,
            hp=config.model.baseline_hyperparams,
            input_shape=sample.input_shape,
            num_classes=task,
            cfg=config.sanity,
            device=device,
            seed=config.seed,
            import_path=config.model.import_path,
            grad_clip_norm=config.training.grad_clip_norm,
            oversample_ratio=config.sample.oversample_ratio,
            on_step=lambda phase, step, metrics: reporter.stage_advanced(Stage.SANITY, f"{phase} step {step}"),
        )
        if result.passed and config.sanity.baseline_epochs > 0:
            result = result.model_copy(update={"baseline": fit_baseline(config, arrays, sample, task)})
        record_sanity(tree.client, run_id, config, result)
    # The task lowers the target when identical inputs carry different targets (a share of what is reachable).
    target = result.overfit_target if result.overfit_target is not None else config.sanity.overfit_target_acc
    summary = (
        f"initial loss {result.initial_loss:.3f} (expected {result.expected_initial_loss:.3f}), "
        f"overfit {_overfit_score(result.overfit_train_acc, target)} "
        f"in {result.overfit_steps} steps"
    )
    if result.lr_suggestion is not None:
        summary += f", suggested lr {result.lr_suggestion:.2g}"
    elif result.lr_range:
        summary += f", no lr suggestion (the loss did not fall within the {len(result.lr_range)}-step LR range test)"
    if result.baseline is not None and result.baseline.history:
        summary += f", baseline {epoch_line(result.baseline.history[-1], skewed(sample))}"
    reporter.stage_finished(Stage.SANITY, ("passed: " if result.passed else "FAILED: ") + summary)
    return result


def fit_baseline(config: PipelineConfig, arrays: StageArrays, sample: SampleResult, task: Task) -> BaselineFit:
    """Train the baseline hyperparameters for `sanity.baseline_epochs` epochs on the sampled data."""
    hp = config.model.baseline_hyperparams
    device = resolve_device(config.execution.device)
    model = build_model(
        config.model.family, hp, sample.input_shape, task.output_size, config.model.import_path, seed=config.seed
    )
    feed = make_train_loader(
        arrays.X_train_sampled, arrays.y_train_sampled, hp, task, config.seed, config.sample.oversample_ratio
    )
    feed = replace(
        feed, augment=build_augmenter(config, hp, feed.task, sample.input_shape, config.seed, pixels_of(sample))
    )
    val_loader = make_eval_loader(arrays.X_val_sampled, arrays.y_val_sampled, batch_size=512, task=task)
    reporter = progress.current()
    reporter.stage_started("baseline", "baseline fit", total=config.sanity.baseline_epochs)
    outcome = fit(
        model,
        feed,
        val_loader,
        hp,
        config.sanity.baseline_epochs,
        device,
        on_epoch=lambda r: reporter.stage_advanced("baseline", epoch_line(r, skewed(sample))),
        grad_clip_norm=config.training.grad_clip_norm,
        amp_bf16=config.execution.amp_bf16,
        max_batches_per_epoch=config.training.max_batches_per_epoch,
    )
    reporter.stage_finished("baseline", f"{len(outcome.history)} epochs, {outcome.status}")
    return BaselineFit(hyperparams=hp, status=outcome.status, reason=outcome.reason, history=outcome.history)


def record_sanity(client: MlflowClient, run_id: str, config: PipelineConfig, result: SanityResult) -> None:
    """Params, figures, curves and the result JSON of the sanity stage."""
    log_params(client, run_id, {f"sanity.{k}": v for k, v in config.sanity.model_dump(mode="json").items()})
    baseline = logged_hyperparams(config.model.baseline_hyperparams, config.model)
    log_params(client, run_id, {f"baseline.{k}": v for k, v in baseline.items()})
    tags = {"stagetune.sanity.passed": str(result.passed).lower()}
    if result.diagnoses:
        tags["stagetune.diagnosis"] = ",".join(d.code for d in result.diagnoses)
    log_tags(client, run_id, tags)
    rows: list[tuple[str, float, int]] = [
        ("sanity/initial_loss", result.initial_loss, 0),
        ("sanity/expected_initial_loss", result.expected_initial_loss, 0),
        (
            "sanity/overfit_train_r2" if result.task == "regression" else "sanity/overfit_train_acc",
            result.overfit_train_acc,
            0,
        ),
        ("sanity/overfit_steps", result.overfit_steps, 0),
        ("sanity/passed", float(result.passed), 0),
    ]
    rows += [("overfit/loss", loss, step) for step, loss in enumerate(result.overfit_losses) if math.isfinite(loss)]
    for step, point in enumerate(result.lr_range):
        rows += [("lr_range/lr", point.lr, step), ("lr_range/smoothed_loss", point.smoothed_loss, step)]
    if result.lr_suggestion is not None:
        rows.append(("sanity/lr_suggestion", result.lr_suggestion, 0))
    if result.baseline is not None:
        rows += epoch_metric_rows(result.baseline.history)
    log_metrics(client, run_id, [row for row in rows if math.isfinite(row[1])])
    log_model_json(client, run_id, result, "results/sanity.json")
    # SVG text, not matplotlib PNGs: these are drawn before the first trial starts (bench/README.md, issue 18).
    client.log_text(run_id, overfit_svg(result), "plots/overfit_loss.svg")
    if result.lr_range:
        client.log_text(run_id, lr_range_svg(result.lr_range, result.lr_suggestion), "plots/lr_range.svg")
    if result.baseline is not None and result.baseline.history:
        client.log_text(run_id, learning_curve_svg(result.baseline.history, "baseline fit"), "plots/learning_curve.svg")


def epoch_line(record: EpochRecord, balanced: bool = False) -> str:
    """ "val loss 0.1234 acc 0.950" / "val loss 0.4321 rmse 53.2 r2 0.47": the epoch's validation in one line;
    `balanced` (skewed classes) adds the balanced accuracy."""
    text = f"val loss {record.val_loss:.4f}" if record.val_loss is not None else f"train loss {record.train_loss:.4f}"
    names = ("val/acc", "val/balanced_acc", "val/rmse", "val/r2") if balanced else ("val/acc", "val/rmse", "val/r2")
    for name in names:
        if name in record.metrics:
            text += f" {name.removeprefix('val/')} {record.metrics[name]:.4g}"
    return text


def skewed(sample: SampleResult) -> bool:
    """Stage 1 found the classes skewed (progress lines then show balanced figures)."""
    return sample.defaults is not None and sample.defaults.skewed


def _overfit_score(score: float, target: float) -> str:
    # Two decimals print 0.9896 as "0.99" next to a 0.99 target it missed: show what decided.
    text = f"{score:.2f}"
    if score < target and f"{target:.2f}" == text:
        text = f"{score:.4f}"
    return text if score >= target else f"{text} < target {target:g}"
