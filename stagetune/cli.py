"""The `stagetune` command: run, validate, schema.

Exit codes: 0 success, 1 unexpected error, 2 invalid input (config, data, arguments), 3 sanity gate
failed. Invalid input is reported as one paragraph naming the field and the fix, never a traceback.
"""

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console

from schemas.config import PipelineConfig
from schemas.pipeline import PipelineResult
from schemas.urls import without_credentials
from stagetune.atomic_file import write_text_atomically
from stagetune.ci_summary import mlflow_run_page
from stagetune.cli_deploy import serve
from stagetune.cli_errors import EXIT_OK, EXIT_SANITY, guarded
from stagetune.cli_help import FlagCommand, FlagGroup
from stagetune.cli_report import compare, report
from stagetune.cli_stack import stack_app
from stagetune.config_loading import check_environment, load_config, read_config, validate_config
from stagetune.errors import InputError, StoreError
from stagetune.interruption import set_resume_hint, stop_on_sigterm
from stagetune.prefect_startup import EarlyApiServer, start_api_server_early  # stdlib only: cheap
from stagetune.run_store import find_run, saved_config
from stagetune.runtime import configure_process
from stagetune.store_check import check_stores_writable

app = typer.Typer(
    cls=FlagGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Staged hyperparameter tuning for PyTorch models.",
)
ConfigArg = Annotated[
    Path | None, typer.Argument(help="YAML config file; omitted: the embedded defaults (digits, MLP).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a setting: dotted.key=value (repeatable)."),
]


@app.command(cls=FlagCommand)
def run(
    config: ConfigArg = None,
    overrides: SetOpt = None,
    summary: Annotated[Path | None, typer.Option(help="Write the pipeline result as JSON to this path.")] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            metavar="RUN",
            help="Continue this run (its folder name under <workdir>/runs, its path, or its MLflow parent run id); "
            "without CONFIG and --set, with the config it was started with.",
            show_default=False,
        ),
    ] = None,
    new: Annotated[
        bool, typer.Option("--new", help="Start a new run even if an unfinished run of this config exists.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect logs and tracebacks.")] = False,
) -> None:
    """Run the pipeline on CONFIG and record everything in MLflow.

    An unfinished run of the same config (killed, or stopped by an error) is continued where it
    stopped, unless --new is given.
    """
    console = Console(stderr=True, soft_wrap=True)
    configure_process(verbose)
    stop_on_sigterm()  # SIGTERM stops as Ctrl-C does: message, exit 143, stores consistent
    settings = guarded(console, lambda: _run_config(config, overrides or [], resume, new), verbose)
    # Prefect's temporary API server (when this run needs one) starts in a child process once the config has
    # passed its schema, before the checks against this machine (torch's import, ~1.3 s of CPU) and the stores
    # (SQLAlchemy's, ~1.2 s), whose imports the child's start then overlaps: in a cold start it is the last to
    # be ready. A config refused by its schema starts no server.
    api_server = start_api_server_early()
    try:
        guarded(console, lambda: check_environment(settings), verbose)
        # Before the flow starts (seconds): a read-only store is refused before anything is written.
        tracking = guarded(console, lambda: check_stores_writable(settings), verbose)
        if summary is not None:
            guarded(console, lambda: _check_writable(summary), verbose)
    except BaseException:
        api_server.stop()  # at once, not at exit: a caller running commands in-process (tests) would keep it
        raise
    result = guarded(
        console,
        lambda: _run_flow(settings, console, api_server, tracking.tracking_uri, resume=resume, new=new),
        verbose,
        expected=(StoreError,),
    )
    if summary is not None:
        write_text_atomically(summary, result.model_dump_json(indent=2), fsync=False)
    _print_result(console, settings, result)
    raise typer.Exit(EXIT_SANITY if result.status == "sanity_failed" else EXIT_OK)


@app.command(cls=FlagCommand)
def worker(
    config: ConfigArg = None,
    study: Annotated[
        str, typer.Option(help="The pipeline's search.study_name: joins <study>-coarse, <study>-refine.")
    ] = ...,  # type: ignore[assignment]
    overrides: SetOpt = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for each study to appear.", min=0)] = 600.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks.")] = False,
) -> None:
    """Run trials of a running pipeline's shared studies (same CONFIG, shared Optuna storage)."""
    console = Console(stderr=True, soft_wrap=True)
    configure_process(verbose)
    stop_on_sigterm()
    set_resume_hint("its unfinished trial is retried by the pipeline; start the worker again to go on helping")
    settings = guarded(console, lambda: load_config(config, overrides or []), verbose)

    def work() -> int:
        from stagetune.progress import RichReporter, use
        from stagetune.worker import run_worker

        with RichReporter(console) as reporter, use(reporter):
            summary = run_worker(settings, study, wait_seconds=wait)
        return sum(len(records) for records in summary.trials.values())

    guarded(console, lambda: check_stores_writable(settings), verbose)
    ran = guarded(console, work, verbose, expected=(StoreError,))
    Console(file=sys.stdout, soft_wrap=True).print(f"worker done: {ran} trial(s) run for study {study!r}")


@app.command(cls=FlagCommand)
def validate(
    config: ConfigArg = None,
    overrides: SetOpt = None,
    show: Annotated[bool, typer.Option(help="Print the resolved config (defaults filled in) as YAML.")] = False,
) -> None:
    """Check CONFIG (and overrides) without running anything."""
    console = Console(stderr=True, soft_wrap=True)
    settings = guarded(console, lambda: load_config(config, overrides or []))
    if show:
        typer.echo(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
    console.print(f"[green]valid[/green]: {config or 'embedded defaults'}")


class ExampleKind(StrEnum):
    """The synthetic data sets `make-example` writes."""

    shapes = "shapes"
    keypoints = "keypoints"


@app.command("make-example", cls=FlagCommand)
def make_example(
    kind: Annotated[ExampleKind, typer.Argument(help="shapes: image classification; keypoints: image regression.")],
    out: Annotated[Path, typer.Argument(metavar="DIR", help="New (or empty) folder to write.")],
    count: Annotated[
        int | None, typer.Option(help="Images per class (shapes, default 300) or in all (keypoints, default 1000).")
    ] = None,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 32,
    seed: Annotated[int, typer.Option(help="Same seed, same images.")] = 0,
) -> None:
    """Write a synthetic image data set to DIR (offline), to try image folders and CNNs on."""
    from stagetune import examples_data

    console = Console(stderr=True, soft_wrap=True)
    if kind is ExampleKind.shapes:
        written = guarded(console, lambda: examples_data.make_shapes(out, count or 300, size, seed))
        typer.echo(f"wrote {written} images of {len(examples_data.SHAPES)} classes to {out}/")
        typer.echo(f"try: stagetune run --set data.source={out}/ --set model.family=cnn")
    else:
        table = guarded(console, lambda: examples_data.make_keypoints(out, count or 1000, size, seed))
        typer.echo(f"wrote {count or 1000} images and {table}")
        typer.echo(f"try: stagetune run configs/keypoints.yaml --set data.source={table}")


@app.command(cls=FlagCommand)
def schema() -> None:
    """Print the JSON schema of the config."""
    typer.echo(json.dumps(PipelineConfig.model_json_schema(), indent=2))


app.command(cls=FlagCommand)(report)
app.command(cls=FlagCommand)(compare)
app.command(cls=FlagCommand)(serve)
app.add_typer(stack_app, name="stack", help="A local S3 + MLflow (+ Prefect) stack on 127.0.0.1, no Docker.")


def main() -> None:
    """Console-script entry point."""
    app()


def _run_config(config: Path | None, overrides: list[str], resume: str | None, new: bool) -> PipelineConfig:
    """The run's config, checked against its schema only: `run` checks it against this machine next."""
    if resume is not None and new:
        raise InputError("--new", "--new starts a fresh run and --resume continues one: give only one of them")
    if resume is None or config is not None or overrides:
        return read_config(config, overrides)
    # `--resume RUN` alone: the config the run was started with (found under the default workdir or by path).
    return validate_config(saved_config(find_run(read_config(None, []), resume)))


def _run_flow(
    settings: PipelineConfig,
    console: Console,
    api_server: EarlyApiServer,
    tracking_uri: str,
    resume: str | None = None,
    new: bool = False,
) -> PipelineResult:
    # Prefect's temporary API server goes on starting in its child process while this one imports the
    # flow's modules (imported here: Prefect reads its settings at import, after configure_process set them).
    # torch._dynamo too (~1 s of CPU with sympy): torch imports it at the flow's start anyway (the first
    # `torch.use_deterministic_algorithms` call sets torch._inductor.config) and on building any optimizer
    # (`Optimizer.add_param_group` is wrapped in `torch._disable_dynamo`). Here it fills the wait for a server
    # still starting (a cold start); with the server up already it only comes earlier.
    import torch._dynamo  # noqa: F401

    from flows.tune_pipeline import configured_pipeline
    from stagetune.progress import RichReporter, use

    if not tracking_uri.startswith(("http://", "https://")):
        # MLflow's database store configures its SQLAlchemy mappers on import (~0.8 s of CPU), which the flow
        # would do on creating the parent run, after the wait: here it fills a cold server start's wait too.
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    api_server.wait()
    flow = configured_pipeline(settings.execution)
    with RichReporter(console) as reporter, use(reporter), api_server.flow_settings():
        return flow(settings, resume=resume, new=new)


def _check_writable(path: Path) -> None:
    if not path.parent.resolve().is_dir():
        raise InputError("--summary", f"folder {str(path.parent)!r} does not exist: create it or pick another path")
    if path.is_dir():
        raise InputError("--summary", f"{str(path)!r} is a folder: give a file path such as summary.json")


def _print_result(console: Console, settings: PipelineConfig, result: PipelineResult) -> None:
    out = Console(file=sys.stdout, highlight=False, soft_wrap=True)
    if result.status == "sanity_failed" and result.sanity is not None:
        console.print("[red]sanity gate failed[/red] — no search was started.", highlight=False)
        for diagnosis in result.sanity.diagnoses:
            console.print(
                f"  [bold]{diagnosis.code}[/bold] ({diagnosis.check}): {diagnosis.message} "
                f"Next: {diagnosis.next_action} [dim](rule: {diagnosis.rule_source})[/dim]",
                highlight=False,
            )
    else:
        out.print(result.message)
    for line in closing_lines(result, _report_path(settings, result)):
        out.print(line)


def closing_lines(result: PipelineResult, report_html: Path | None) -> list[str]:
    """The run's last lines: its MLflow run, the HTML report's path, and how to open the run in MLflow's UI."""
    run, experiment = result.mlflow_parent_run_id, result.mlflow_experiment_id
    lines = [f"MLflow run: {run} (experiment {experiment})"]
    if report_html is not None:
        lines.append(f"Report: {report_html}")
    page = mlflow_run_page(experiment, run)
    if result.tracking_uri.startswith(("http://", "https://")):
        base = without_credentials(result.tracking_uri).rstrip("/")
        lines.append(f"MLflow UI: open {base}/{page}")
    else:
        lines.append(f"MLflow UI: mlflow ui --backend-store-uri {result.tracking_uri}")
        lines.append(f"           then open http://127.0.0.1:5000/{page}")
    return lines


def _report_path(settings: PipelineConfig, result: PipelineResult) -> Path | None:
    """The HTML report the run wrote into its folder, if it did (tracking.report)."""
    from stagetune.report.build import HTML_NAME

    if not settings.tracking.report:
        return None
    try:
        html = find_run(settings, result.mlflow_parent_run_id) / "report" / HTML_NAME
    except InputError:
        return None
    return html if html.is_file() else None
