"""What the `report` and `compare` commands do, apart from argument parsing and printing."""

import os
from pathlib import Path

from mlflow.tracking import MlflowClient

from stagetune.report.build import ReportFiles, build_report, write_report
from stagetune.report.compare import Comparison, compare_results, comparison_html
from stagetune.report.mlflow_io import load_pipeline_result, load_run_config, log_report_files, resolve_tracking_uri

COMPARE_NAME = "compare.html"


def quiet_artifact_downloads() -> None:
    """No progress bar per downloaded artifact on the console (set when a command starts)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def write_run_report(run_id: str, out: Path, tracking_uri: str | None, log: bool) -> ReportFiles:
    """Build the report of parent run `run_id`, write it to `out`, and (if `log`) attach it to the run."""
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    files = write_report(build_report(load_pipeline_result(client, run_id), client), out)
    if log:
        log_report_files(client, run_id, files.all())
    return files


def write_comparison(run_a: str, run_b: str, out: Path, tracking_uri: str | None) -> tuple[Comparison, Path]:
    """Compare run B against run A; write compare.html to `out`."""
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    result_a, result_b = load_pipeline_result(client, run_a), load_pipeline_result(client, run_b)
    comparison = compare_results(result_a, result_b, load_run_config(client, run_a), load_run_config(client, run_b))
    out.mkdir(parents=True, exist_ok=True)
    path = out / COMPARE_NAME
    path.write_text(comparison_html(comparison), encoding="utf-8")
    return comparison, path
