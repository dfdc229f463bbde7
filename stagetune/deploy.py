"""Scheduled deployments of the tuning flow: what `stagetune serve` registers and runs.

A deployment's only parameter is the pipeline config, as JSON-compatible data. Prefect checks a
run's parameters twice against the same pydantic `PipelineConfig`: the server against its JSON
schema when the run is created (ranges, types, unknown keys), and the flow engine with pydantic
itself when the run starts (every validator, cross-field checks included). Secrets never travel
as parameters: the serving process's environment (tracking URI, S3 keys) is its runs' environment.
"""

from typing import Any

from pydantic import ValidationError

from schemas.config import PipelineConfig
from stagetune.errors import InputError


def deployment_parameters(config: PipelineConfig) -> dict[str, Any]:
    """The flow's parameters for a deployment: the validated config, defaults filled in."""
    return {"config": config.model_dump(mode="json")}


def check_cron(cron: str) -> str:
    """`cron` when Prefect accepts it as a cron schedule; otherwise an InputError naming `--cron`."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except ValidationError:
        raise InputError(
            "--cron",
            f"{cron!r} is not a cron expression: use five fields (minute hour day month weekday), "
            "e.g. '0 3 * * 1' for Mondays at 03:00 UTC",
        ) from None
    return cron


def require_prefect_server() -> str:
    """The Prefect API URL a deployment is registered with; an InputError when none is configured.

    Without one Prefect would start a temporary server that lives only as long as this process,
    with no scheduler to create the cron runs.
    """
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise InputError(
            "PREFECT_API_URL",
            "not set: a schedule needs a Prefect server that keeps running. Start one with "
            "`prefect server start` and export PREFECT_API_URL=http://127.0.0.1:4200/api",
        )
    return str(url)


def serve_pipeline(config: PipelineConfig, cron: str, name: str | None = None) -> None:
    """Register the deployment `stagetune/<name>` with `cron` and run its flow runs until interrupted.

    The name defaults to the config's. Trials run on the task runner the config names
    (`execution.task_runner`), for scheduled and triggered runs alike.
    """
    # Imported here: Prefect reads its settings at import, after the command has set them.
    from flows.runners import make_task_runner
    from flows.tune_pipeline import tune_pipeline

    served = tune_pipeline.with_options(task_runner=make_task_runner(config.execution))
    served.serve(
        name=name or config.name,
        cron=cron,
        parameters=deployment_parameters(config),
        description=f"Staged tuning of {config.name!r} ({config.data.source}, {config.model.family}).",
        tags=["stagetune"],
    )
