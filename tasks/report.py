"""Prefect task wrapper of the tuning report: MLflow artifacts plus a Markdown artifact on the flow run."""

import re

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from schemas.pipeline import PipelineResult
from stagetune.report.publish import publish_report
from stagetune.tracking.run_tree import RunTree


def report_artifact_key(name: str) -> str:
    """The Prefect artifact key of a pipeline's report (keys allow lowercase letters, digits and dashes)."""
    return "stagetune-report-" + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "run")


@task(name="tuning-report", cache_policy=NO_CACHE)
def publish_tuning_report(result: PipelineResult, tree: RunTree) -> str | None:
    """Write the tuning report, attach it to the parent MLflow run, publish its Markdown on the flow run.

    The run's results are recorded before this runs: a report that cannot be built is logged as an
    error and published as such, and the pipeline's result stands. Returns the local HTML path.
    """
    key = report_artifact_key(result.name)
    try:
        published = publish_report(result, tree)
    except Exception as error:
        get_run_logger().error("the tuning report could not be built", exc_info=True)
        markdown = f"# Tuning report: {result.name}\n\nNot built: {type(error).__name__}: {error}"
        create_markdown_artifact(key=key, markdown=markdown, description="stagetune tuning report (failed)")
        return None
    description = f"stagetune tuning report of MLflow run {published.mlflow_run_id}"
    create_markdown_artifact(key=key, markdown=published.markdown, description=description)
    return None if published.html_path is None else str(published.html_path)
