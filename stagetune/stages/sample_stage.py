"""Stage 1 in MLflow: the sample-and-rebalance result, its figures and a class-distribution chart."""

from typing import TYPE_CHECKING

from schemas.results import DataDefaults, SampleResult
from schemas.stages import Stage
from stagetune.tracking.run_tree import RunTree, end_run, log_metrics, log_model_json, log_params, log_tags
from stagetune.tracking.svg_charts import bar_chart_svg

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def record_sample_stage(tree: RunTree, result: SampleResult, started_ms: int, ended_ms: int) -> str:
    """Create the `sample` stage run (timed as the stage ran) with params, counts and artifacts."""
    run_id = tree.start_stage(Stage.SAMPLE, start_time_ms=started_ms)
    client = tree.client
    log_params(client, run_id, {"source": result.source, "rebalance": result.rebalance, "task": result.task})
    log_tags(client, run_id, {"stagetune.data_fingerprint": result.fingerprint})
    sizes = {
        "rows": result.n_rows,
        "train_rows": result.n_train,
        "val_rows": result.n_val,
        "test_rows": result.n_test,
        "train_rows_sampled": result.n_train_sampled,
        "val_rows_sampled": result.n_val_sampled,
        "num_classes": result.num_classes,
        "dropped_target_rows": result.dropped_label_rows,
    }
    log_metrics(client, run_id, [(f"data/{name}", value, 0) for name, value in sizes.items()])
    log_model_json(client, run_id, result, "results/sample.json")
    if result.task == "classification":
        client.log_text(run_id, class_distribution_svg(result), "plots/class_distribution.svg")
    end_run(client, run_id, "FINISHED", end_time_ms=ended_ms)
    return run_id


def sample_summary(result: SampleResult) -> str:
    """One line for the console: the task and why, sizes, classes or targets, strategy."""
    task = f"task {result.task}" + (f" ({result.task_reason})" if result.task_reason else "")
    sizes = f"{result.n_rows} rows -> train {result.n_train} / val {result.n_val} / test {result.n_test}"
    if result.task == "regression":
        dropped = f", {result.dropped_label_rows} rows without a target dropped" if result.dropped_label_rows else ""
        targets = ", ".join(result.target_names)
        return f"{task}; {sizes}{dropped}; tuning on {result.n_train_sampled} rows, target(s) {targets} standardised"
    return (
        f"{task}; {sizes}; "
        f"tuning on {result.n_train_sampled} rows of {len(result.sampled_class_names)} classes, "
        f"rebalance={result.rebalance}"
    )


def image_defaults_summary(defaults: DataDefaults) -> str:
    """The settings chosen for image data, one reason per line (the config left them unset)."""
    lines = [reason for reason in defaults.reasons if reason.split(" -> ", 1)[0] in defaults.settings]
    return "image data, settings the config leaves unset:\n  " + "\n  ".join(lines)


def class_distribution_series(result: SampleResult) -> dict[str, dict[str, int]]:
    """Per-class rows: full training split, after sampling, and what one epoch sees after rebalancing."""
    return {
        "train (full)": result.class_counts_train,
        "sampled": result.class_counts_sampled,
        f"per epoch ({result.rebalance})": result.class_counts_rebalanced,
    }


def class_distribution_svg(result: SampleResult) -> str:
    """The class distribution as grouped bars, SVG text (logged on the way to the first trial: no matplotlib)."""
    return bar_chart_svg(
        list(result.class_counts_train), class_distribution_series(result), "class distribution", "rows"
    )


def class_distribution_figure(result: SampleResult) -> "Figure":
    """The class distribution as a matplotlib figure (the HTML report's version)."""
    from matplotlib.figure import Figure  # only the report draws it: matplotlib stays off the run's start

    figure = Figure(figsize=(max(5.0, 0.6 * len(result.class_counts_train) + 2), 3.6), layout="constrained")
    axes = figure.subplots()
    series = class_distribution_series(result)
    labels = list(result.class_counts_train)
    width = 0.8 / len(series)
    for offset, (name, counts) in enumerate(series.items()):
        positions = [i + (offset - 1) * width for i in range(len(labels))]
        axes.bar(positions, [counts.get(label, 0) for label in labels], width=width, label=name)
    axes.set_xticks(range(len(labels)), labels)
    axes.set(xlabel="class", ylabel="rows", title="class distribution")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=len(series), frameon=False)
    return figure
