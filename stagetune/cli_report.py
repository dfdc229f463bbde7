"""`stagetune report RUN_ID` and `stagetune compare RUN_A RUN_B`: typer command functions.

Wired into the main app in stagetune/cli.py. Exit codes as there: 0 success, 2 invalid input (an
unknown run, no tracking store), 1 anything else. MLflow is imported when a command runs, so
`stagetune --help` stays fast.
"""

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from stagetune.cli_errors import guarded
from stagetune.runtime import configure_process

if TYPE_CHECKING:
    from stagetune.report.compare import Comparison

TrackingOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI; default: MLFLOW_TRACKING_URI or the settings, else ./stagetune-runs/mlflow.db.",
    ),
]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Folder to write into (created if missing).")]


def report(
    run: Annotated[
        str,
        typer.Argument(
            metavar="RUN",
            help="The run: its folder name under <workdir>/runs (as `stagetune run` prints it), its path, "
            "or its MLflow parent run id.",
        ),
    ],
    out: OutOpt = None,
    tracking_uri: TrackingOpt = None,
    log: Annotated[bool, typer.Option("--log/--no-log", help="Attach the report to the parent MLflow run.")] = True,
) -> None:
    """Write the tuning report of RUN (HTML, Markdown, summary JSON); default folder ./report-RUN."""
    configure_process()
    from stagetune.report.commands import quiet_artifact_downloads, write_run_report

    quiet_artifact_downloads()
    console = Console(stderr=True, soft_wrap=True, highlight=False)
    run_id, recorded_uri, label = guarded(console, lambda: resolve_run(run))
    folder = out or Path(f"report-{label}")
    uri = tracking_uri or recorded_uri
    files = guarded(console, lambda: write_run_report(run_id, folder, uri, log))
    stdout = Console(file=sys.stdout, soft_wrap=True, highlight=False)
    stdout.print(f"report: {files.html}\nmarkdown: {files.markdown}\nnumbers: {files.summary}")
    if log:
        stdout.print(f"attached to MLflow run {run_id} as report/{files.html.name} and report/{files.markdown.name}")


def resolve_run(run: str) -> tuple[str, str | None, str]:
    """(MLflow parent run id, the tracking URI the run recorded to or None, a label for file names) of a
    run folder name or path under the default workdir, as `--resume` takes them; else `run` is taken
    for an MLflow parent run id."""
    from schemas.config import PipelineConfig
    from stagetune.errors import InputError
    from stagetune.run_store import find_run, read_run_state

    try:
        folder = find_run(PipelineConfig(), run)
    except InputError:
        return run, None, run
    state = read_run_state(folder)
    if state is None or state.parent_run_id is None:
        raise InputError("RUN", f"run {folder.name} has no MLflow run yet (it stopped before its first stage ended)")
    return state.parent_run_id, state.tracking_uri, folder.name


def compare(
    run_a: Annotated[str, typer.Argument(metavar="RUN_A", help="Run A, the reference (as for `report`).")],
    run_b: Annotated[str, typer.Argument(metavar="RUN_B", help="Run B (folder name, path or MLflow run id).")],
    out: OutOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Compare two pipeline runs: config diff, best parameters, test metrics, the stage that moved most."""
    configure_process()
    from stagetune.report.commands import quiet_artifact_downloads, write_comparison

    quiet_artifact_downloads()
    console = Console(stderr=True, soft_wrap=True, highlight=False)
    (id_a, uri_a, label_a), (id_b, _, label_b) = guarded(console, lambda: (resolve_run(run_a), resolve_run(run_b)))
    folder = out or Path(f"compare-{label_a[:24]}-{label_b[:24]}")
    uri = tracking_uri or uri_a
    comparison, path = guarded(console, lambda: write_comparison(id_a, id_b, folder, uri))
    print_comparison(Console(file=sys.stdout, soft_wrap=True, highlight=False), comparison)
    console.print(f"written: {path}")


def print_comparison(console: Console, comparison: "Comparison") -> None:
    """The comparison as rich tables: stages, test metrics, best parameters, config diff, then the verdict."""
    from stagetune.report.markup import format_value

    stages = Table("stage", "number", "A", "B", "B vs A", "B is", title="stage by stage")
    for move in comparison.moves:
        relative = "n/a" if move.relative is None else f"{move.relative:+.1%}"
        stages.add_row(move.stage, move.metric, format_value(move.a), format_value(move.b), relative, move.verdict)
    metrics = Table("metric", "A", "B", title="test metrics")
    for name, a, b in comparison.test_metrics:
        metrics.add_row(name, format_value(a), format_value(b))
    params = Table("parameter", "A", "B", title="best hyperparameters")
    for row in comparison.best_params:
        params.add_row(*row)
    diff = Table("key", "A", "B", title=f"config diff ({len(comparison.config_diff)} keys)")
    for row in comparison.config_diff:
        diff.add_row(*row)
    for table in (stages, metrics, params, diff):
        console.print(table)
    for line in comparison.verdict:
        console.print(line)
