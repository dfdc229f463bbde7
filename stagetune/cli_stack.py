"""`stagetune stack up | down | status`: the local S3 + MLflow (+ Prefect) stack, no Docker.

Thin commands over `stagetune.stack`. Status lines go to stderr; `up` prints only the
`export STAGETUNE_SETTINGS_FILE=...` line on stdout, so `eval "$(stagetune stack up)"` works.
"""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from stagetune.cli_errors import EXIT_ERROR, guarded
from stagetune.cli_help import FlagCommand, FlagGroup
from stagetune.stack import ServiceStatus, StackError, StackOptions, resolve_paths, stack_down, stack_status, stack_up
from stagetune.stack.credentials import CredentialsError

# Failures of the stack itself (or its state folder): reported without a traceback.
STACK_ERRORS = (StackError, CredentialsError, OSError)

stack_app = typer.Typer(
    cls=FlagGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="A local S3 (SeaweedFS) + MLflow server (+ Prefect server) on 127.0.0.1, without Docker.",
)
StateDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="State folder (data, credentials, logs, PIDs); default $STAGETUNE_STACK_DIR or "
        "~/.local/state/stagetune/stack.",
        show_default=False,
    ),
]


@stack_app.command(cls=FlagCommand)
def up(
    state_dir: StateDirOpt = None,
    s3_port: Annotated[int | None, typer.Option(help="S3 port (default 8333, or the running one's).")] = None,
    mlflow_port: Annotated[int | None, typer.Option(help="MLflow port (default 5000, or the running one's).")] = None,
    prefect: Annotated[bool, typer.Option("--prefect", help="Also start a Prefect server.")] = False,
    prefect_port: Annotated[int | None, typer.Option(help="Prefect port (default 4200, or the running one's).")] = None,
    backend_store_uri: Annotated[
        str | None,
        typer.Option(
            help="MLflow backend store, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/stagetune_mlflow "
            "(the database is created if missing); default: SQLite in the state folder, or the previous up's."
        ),
    ] = None,
    optuna_storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL written to stack.env as STAGETUNE_OPTUNA_STORAGE.")
    ] = None,
    bucket: Annotated[
        str | None, typer.Option(help="S3 bucket for MLflow's artifacts (default stagetune, or the previous up's).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each service to become healthy.")] = 120.0,
) -> None:
    """Start whatever is not running yet, wait until healthy, write the settings file."""
    console = Console(stderr=True, soft_wrap=True, highlight=False)
    options = StackOptions(
        s3_port=s3_port,
        mlflow_port=mlflow_port,
        prefect_port=prefect_port,
        prefect=prefect,
        backend_store_uri=backend_store_uri,
        optuna_storage=optuna_storage,
        bucket=bucket,
        timeout_s=timeout,
    )
    info = guarded(
        console, lambda: stack_up(resolve_paths(state_dir), options), expected=(StackError, CredentialsError, OSError)
    )
    for service in info.services:
        took = f"started in {service.seconds:.1f} s" if service.seconds is not None else "already running"
        console.print(f"{service.service:8} {service.url}  PID {service.pid}  {took}", markup=False)
    console.print(f"settings: {info.paths.env_file} (mode 0600; logs in {info.paths.logs})", markup=False)
    typer.echo(info.export_line)


@stack_app.command(cls=FlagCommand)
def down(
    state_dir: StateDirOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL.")] = 15.0,
) -> None:
    """Stop every process the stack started (by PID); data and credentials stay."""
    console = Console(stderr=True, soft_wrap=True, highlight=False)
    stopped = guarded(
        console, lambda: stack_down(resolve_paths(state_dir), timeout), expected=(StackError, CredentialsError, OSError)
    )
    for service in stopped:
        console.print(f"{service.service:8} PID {service.pid}  {service.state}", markup=False)
    if not stopped:
        console.print("nothing was running")


@stack_app.command(cls=FlagCommand)
def status(state_dir: StateDirOpt = None) -> None:
    """Each service: PID, port, health. Exit code 1 when a recorded service is not healthy."""
    console = Console(soft_wrap=True, highlight=False)
    services = guarded(
        console, lambda: stack_status(resolve_paths(state_dir)), expected=(StackError, CredentialsError, OSError)
    )
    for service in services:
        console.print(_status_line(service), markup=False)
    if any(s.state not in ("healthy", "stopped") for s in services):
        raise typer.Exit(EXIT_ERROR)


def _status_line(service: ServiceStatus) -> str:
    if service.pid is None:
        return f"{service.service:8} stopped"
    extra = "; ".join(f"{k}: {v}" for k, v in service.details.items())
    return f"{service.service:8} {service.state:9} PID {service.pid:<7} port {service.port}  {service.url}  {extra}"
