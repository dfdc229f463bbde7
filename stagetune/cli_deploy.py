"""`stagetune serve`: register the tuning flow as a scheduled deployment and run its flow runs.

Wired into the `stagetune` command in stagetune/cli.py (`app.command()(serve)`); this module does
not import it, so it can be imported from there at module level.
"""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from stagetune.cli_errors import guarded
from stagetune.config_loading import load_config
from stagetune.deploy import check_cron, require_prefect_server, serve_pipeline
from stagetune.runtime import configure_process


def serve(
    config: Annotated[
        Path, typer.Argument(metavar="CONFIG", help="YAML config file: the parameters of every run of the deployment.")
    ],
    cron: Annotated[str, typer.Option(help='When to run, as a cron expression in UTC, e.g. "0 3 * * 1".')],
    overrides: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Override a setting: dotted.key=value (repeatable).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Deployment name; default: the config's name.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect logs and tracebacks.")] = False,
) -> None:
    """Serve CONFIG as the deployment stagetune/NAME on a cron schedule (needs PREFECT_API_URL).

    The config is validated first; runs go to the MLflow/S3/Optuna targets of this process's
    environment. PREFECT_API_URL and the auth string, unless set, come from the settings file
    (`stagetune stack up --prefect` writes them). A run changes the config only through its
    `overrides` parameter (e.g. {"coarse.n_trials": 4}); code paths such as model.import_path come
    only from CONFIG. It serves until stopped (Ctrl-C or SIGTERM).
    """
    console = Console(stderr=True, soft_wrap=True)
    configure_process(verbose, prefect_api_url=True)

    def start() -> None:
        settings = load_config(config, overrides or [])
        check_cron(cron)
        require_prefect_server()
        serve_pipeline(settings, cron, name)

    guarded(console, start, verbose)
