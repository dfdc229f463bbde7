"""Build the tuning report of one pipeline run and write it: HTML, Markdown and the summary JSON."""

import json
import math
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from schemas.pipeline import PipelineResult
from stagetune.report.advice import findings
from stagetune.report.importance import stage_importances, study_storage
from stagetune.report.markup import Numbers, esc
from stagetune.report.mlflow_io import current_versions, load_run_config, recorded_versions
from stagetune.report.model import Report
from stagetune.report.sections_data import data_section, sanity_section
from stagetune.report.sections_final import diagnosis_section, final_section, reproduce_section
from stagetune.report.sections_search import coarse_section, narrowing_section, refine_section
from stagetune.secret_masking import known_secrets, mask_text

HTML_NAME, MARKDOWN_NAME, SUMMARY_NAME = "report.html", "report.md", "report_summary.json"


@dataclass(frozen=True)
class ReportFiles:
    """Where a written report's three files are."""

    html: Path
    markdown: Path
    summary: Path

    def all(self) -> list[Path]:
        """The three paths."""
        return [self.html, self.markdown, self.summary]


def build_report(result: PipelineResult, client: MlflowClient) -> Report:
    """The report of `result`: every number from the stage results; curves, config and versions from MLflow."""
    numbers = Numbers()
    run_id = result.mlflow_parent_run_id
    config = load_run_config(client, run_id)
    secrets = list(known_secrets())
    versions, versions_note = _versions(client, run_id)
    importances = stage_importances(result.refine, study_storage(config)) if result.refine is not None else None
    sections = [
        data_section(result.sample, numbers),
        sanity_section(result.sanity, numbers),
        coarse_section(result.coarse, result.narrowing, client, numbers, result.best_hyperparams),
        narrowing_section(result.narrowing, numbers),
        refine_section(result.refine, importances, client, numbers),
        final_section(result.final, numbers),
        diagnosis_section(findings(result, config), numbers),
        reproduce_section(result, config, versions, versions_note, secrets, numbers),
    ]
    headline = mask_text(result.message, secrets)
    header = (
        f"<h1>Tuning report: {esc(result.name)}</h1>"
        f"<p>Status {numbers.span('run.status', result.status)}; stages completed: "
        f"{esc(', '.join(result.stages_completed))}; MLflow run <code>{esc(run_id)}</code>.</p>"
        f"<p>{esc(headline)}</p>"
    )
    return Report(run_id, result.name, result.status, headline, header, sections, numbers)


def write_report(report: Report, out_dir: Path) -> ReportFiles:
    """Write report.html, report.md and report_summary.json into `out_dir` (created if missing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out_dir / HTML_NAME, out_dir / MARKDOWN_NAME, out_dir / SUMMARY_NAME)
    files.html.write_text(report.html(), encoding="utf-8")
    files.markdown.write_text(report.markdown(), encoding="utf-8")
    summary = _json_safe(report.summary())
    files.summary.write_text(json.dumps(summary, indent=2, allow_nan=False), encoding="utf-8")
    return files


def _versions(client: MlflowClient, run_id: str) -> tuple[dict[str, str], str]:
    recorded = recorded_versions(client, run_id)
    if len(recorded) > 1:
        return recorded, "recorded on the run when it finished"
    versions = {**current_versions(), **recorded}
    return versions, "python as recorded on the run; packages as installed where this report was made"


def _json_safe(data: object) -> object:
    # NaN/inf (a diverged loss) are not JSON: write them as strings, as the stage results do.
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    if isinstance(data, dict):
        return {k: _json_safe(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_json_safe(v) for v in data]
    return data
