"""The report at the end of a pipeline run: versions recorded, files written next to the run, logged to MLflow.

No Prefect here: the task in tasks/report.py publishes the returned Markdown on the flow run.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from schemas.pipeline import PipelineResult
from stagetune.report.build import build_report, write_report
from stagetune.report.mlflow_io import log_report_files, record_versions
from stagetune.tracking.run_tree import RunTree

RUN_DIR_TAG = "stagetune.run_dir"


@dataclass(frozen=True)
class PublishedReport:
    """The report's Markdown (for a Prefect artifact) and where its HTML was kept locally, if anywhere."""

    markdown: str
    html_path: Path | None
    mlflow_run_id: str


def publish_report(result: PipelineResult, tree: RunTree) -> PublishedReport:
    """Build the report of a finished run, keep it in the run's folder and attach it to the parent MLflow run."""
    client = tree.client
    run_id = tree.parent_run_id
    record_versions(client, run_id)  # so a report rebuilt later still shows this run's versions
    report = build_report(result, client)
    run_dir = _run_dir(client, run_id)
    if run_dir is not None:
        files = write_report(report, run_dir / "report")
        log_report_files(client, run_id, files.all())
        return PublishedReport(report.markdown(), files.html, run_id)
    with tempfile.TemporaryDirectory(prefix="stagetune-report-") as folder:
        log_report_files(client, run_id, write_report(report, Path(folder)).all())
    return PublishedReport(report.markdown(), None, run_id)


def _run_dir(client: MlflowClient, run_id: str) -> Path | None:
    tag = client.get_run(run_id).data.tags.get(RUN_DIR_TAG)
    return Path(tag) if tag and Path(tag).is_dir() else None
