"""A pipeline result as a GitHub Actions job summary: best params, test metrics, champion decision, MLflow link.

`python -m stagetune.ci_summary summary.json` prints the markdown for `$GITHUB_STEP_SUMMARY`, from
the JSON that `stagetune run --summary summary.json` wrote.
"""

import argparse
import json
import math
import sys
from pathlib import Path
from urllib.parse import quote, urlsplit

from pydantic import ValidationError

from schemas.pipeline import PipelineResult, SearchStageResult
from schemas.urls import without_credentials
from stagetune.flat_keys import flat_hyperparams

_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "r2", "rmse", "mae", "loss")


def summary_markdown(result: PipelineResult, tracking_uri: str | None = None) -> str:
    """The job summary of one pipeline run; `tracking_uri` (default: the result's) makes the MLflow link."""
    lines = [f"## stagetune `{result.name}`: {result.status.replace('_', ' ')}", "", _escape(result.message), ""]
    uri = tracking_uri or result.tracking_uri
    for section in (_sanity, _test_metrics, _champion, _best_hyperparams, _searches, _reused):
        lines += section(result)
    lines += _version_link(result, uri)
    lines += ["### MLflow", "", _mlflow_line(result, uri), ""]
    return "\n".join(lines)


# MLflow 3.17's UI shows every experiment in its GenAI view (traces, judges; a run listed as an
# "evaluation run") unless the page address or the browser's remembered "GenAI | Model training" switch
# says otherwise; the experiment tag mlflow.experimentKind no longer decides it. Addresses stagetune
# prints ask for the model-training view (runs, models, model registry) themselves.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def mlflow_run_page(experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run, in the model-training view (append it to the UI's base address + `/`)."""
    return f"#/experiments/{quote(experiment_id)}/runs/{quote(run_id)}?{MODEL_TRAINING_VIEW}"


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The MLflow UI address of a run on an http(s) tracking server; None for any other store."""
    if urlsplit(tracking_uri).scheme not in ("http", "https"):
        return None
    base = without_credentials(tracking_uri).rstrip("/")
    return f"{base}/{mlflow_run_page(experiment_id, run_id)}"


def mlflow_version_url(tracking_uri: str, model_name: str, version: int) -> str | None:
    """The MLflow UI address of a registered model version on an http(s) tracking server; None otherwise."""
    if urlsplit(tracking_uri).scheme not in ("http", "https"):
        return None
    base = without_credentials(tracking_uri).rstrip("/")
    return f"{base}/#/models/{quote(model_name, safe='')}/versions/{version}?{MODEL_TRAINING_VIEW}"


def _sanity(result: PipelineResult) -> list[str]:
    if result.sanity is None or result.sanity.passed:
        return []
    items = [
        f"- **{d.code}** ({d.check}): {_escape(d.message)} Next: {_escape(d.next_action)}"
        for d in result.sanity.diagnoses
    ]
    return ["### Sanity gate", "", *items, ""]


def _test_metrics(result: PipelineResult) -> list[str]:
    if not result.test_metrics:
        return []
    # The task's headline metrics first, then any other (per-output regression metrics).
    names = [n for n in _METRICS if n in result.test_metrics] + [n for n in result.test_metrics if n not in _METRICS]
    rows = [f"| {name} | {_number(result.test_metrics[name])} |" for name in names]
    return ["### Test metrics", "", "| metric | value |", "| --- | --- |", *rows, ""]


def _champion(result: PipelineResult) -> list[str]:
    decision = result.final.registry if result.final is not None else None
    if decision is None:
        return []
    text = (
        f"**{decision.decision.replace('_', ' ')}**: `{decision.model_name}` version {decision.version} is "
        f"`{decision.alias}` ({decision.metric_name} {_number(decision.metric_value)}). "
        f"Reason: {_escape(decision.reason)}"
    )
    return ["### Champion decision", "", text, ""]


def _version_link(result: PipelineResult, tracking_uri: str) -> list[str]:
    model = result.registered_model
    if model is None:
        return []
    url = mlflow_version_url(tracking_uri, model.name, model.version)
    label = f"`{model.name}` version {model.version} (`{model.alias}`)"
    if url is None:
        store = without_credentials(tracking_uri)
        return [f"Registered: {label}; `mlflow ui --backend-store-uri {store}`, then Models > {model.name}.", ""]
    return [f"Registered: [{label}]({url})", ""]


def _reused(result: PipelineResult) -> list[str]:
    reused = result.coarse.reused if result.coarse is not None else []
    if not reused:
        return []
    rows = [
        f"| {_escape(item.label)} | {'-' if item.number is None else f'#{item.number}'} "
        f"| {'-' if item.rank is None else item.rank} | {_escape(item.skipped or '')} |"
        for item in reused
    ]
    header = ["| reused point | coarse trial | rank | not enqueued because |", "| --- | --- | --- | --- |"]
    return ["### Reused from earlier runs", "", *header, *rows, ""]


def _best_hyperparams(result: PipelineResult) -> list[str]:
    if result.best_hyperparams is None:
        return []
    rows = [f"| {k} | `{_value(v)}` |" for k, v in flat_hyperparams(result.best_hyperparams).items()]
    return ["### Best hyperparameters", "", "| parameter | value |", "| --- | --- |", *rows, ""]


def _searches(result: PipelineResult) -> list[str]:
    stages = [s for s in (result.coarse, result.refine) if s is not None]
    if not stages:
        return []
    header = [
        "| stage | complete | pruned | failed | best trial | best objective |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    return ["### Searches", "", *header, *(_search_row(s) for s in stages), ""]


def _mlflow_line(result: PipelineResult, tracking_uri: str) -> str:
    run, experiment = result.mlflow_parent_run_id, result.mlflow_experiment_id
    url = mlflow_run_url(tracking_uri, experiment, run)
    if url is not None:
        return f"[Parent run `{run}`]({url}) (experiment {experiment})"
    store = without_credentials(tracking_uri)
    return f"Parent run `{run}` (experiment {experiment}): `mlflow ui --backend-store-uri {store}`"


def _search_row(stage: SearchStageResult) -> str:
    counts = stage.counts
    best = stage.best
    best_number = "-" if best is None else f"#{best.number}"
    best_value = "-" if best is None or best.value is None else f"{stage.objective} {_number(best.value)}"
    return (
        f"| {stage.stage} | {counts.get('COMPLETE', 0)} | {counts.get('PRUNED', 0)} | {counts.get('FAIL', 0)} "
        f"| {best_number} | {best_value} |"
    )


def _value(value: object) -> str:
    # Four significant digits are what a reader compares; the exact values are in the MLflow run.
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def _number(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def _escape(text: str) -> str:
    # Table pipes and HTML-ish brackets from free text must not break the summary's markdown.
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def main(argv: list[str] | None = None) -> int:
    """Print the job summary of the pipeline result in a `--summary` JSON file; exit 2 if it cannot be read."""
    parser = argparse.ArgumentParser(prog="python -m stagetune.ci_summary", description=main.__doc__)
    parser.add_argument("summary", type=Path, help="JSON written by `stagetune run --summary`")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI for the run link (default: the result's)")
    args = parser.parse_args(argv)
    try:
        result = PipelineResult.model_validate_json(args.summary.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as error:
        print(f"error in {args.summary}: not a readable pipeline result ({type(error).__name__})", file=sys.stderr)
        return 2
    print(summary_markdown(result, args.tracking_uri))
    return 0


if __name__ == "__main__":
    sys.exit(main())
