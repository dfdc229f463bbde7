"""The tuning report: what a pipeline run tried, what it learned, what to do next.

`build_report(result, client)` turns a PipelineResult (plus per-trial curves, the config and the
versions stored in MLflow) into a `Report`; `write_report` writes its self-contained HTML, Markdown
summary and summary JSON; `publish_report` does both at the end of a run and attaches the files to
the parent MLflow run; `compare_results` puts two runs side by side.
"""

from stagetune.report.build import ReportFiles, build_report, write_report
from stagetune.report.compare import Comparison, compare_results, comparison_html
from stagetune.report.model import Report, Section
from stagetune.report.publish import PublishedReport, publish_report

__all__ = [
    "Comparison",
    "PublishedReport",
    "Report",
    "ReportFiles",
    "Section",
    "build_report",
    "compare_results",
    "comparison_html",
    "publish_report",
    "write_report",
]
