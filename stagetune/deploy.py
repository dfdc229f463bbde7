"""Scheduled deployments of the tuning flow: what `stagetune serve` registers and runs.

A deployment holds its own pipeline config (`config`, JSON data, validated when it is served or
deployed); a flow run changes it only through `overrides`: settings in the `--set` form, dotted
(`{"coarse.n_trials": 4}`) or nested (`{"coarse": {"n_trials": 4}}`), merged onto the
deployment's config and validated with it as one `PipelineConfig`. A run never replaces the
config, and never sets what makes the flow import or execute code (`DEPLOYMENT_ONLY`): whoever can
call the Prefect API could otherwise run code on the machine that serves the deployment. Secrets
never travel as parameters: the serving process's environment (tracking URI and login, S3 keys) is
its runs' environment.
"""

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from schemas.config import PipelineConfig
from stagetune.config_loading import merge, validate_config, with_value
from stagetune.errors import InputError

# Settings only the deployment's own config may set, and why a run may not.
DEPLOYMENT_ONLY = {
    "model.import_path": "it names the Python module and factory the flow imports and calls",
    "execution.dask_address": "the flow exchanges pickled code with the Dask scheduler there",
}
# Values of a setting that name code to import (`py:module:function`, refused before it exists).
CODE_PREFIXES = {"data.source": ("py:",)}


def deployment_parameters(config: PipelineConfig) -> dict[str, Any]:
    """The flow's parameters for a deployment: its own config (validated; the settings its file and overrides
    gave, so that defaults derived from the data, such as image budgets, still fill the rest), no overrides."""
    return {"config": config.model_dump(mode="json", exclude_unset=True), "overrides": {}}


def nest_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys (`coarse.n_trials`) turned into nested sections; nested sections kept as they are."""
    if not isinstance(overrides, Mapping):
        raise InputError("overrides", f"expected a mapping of settings, got {type(overrides).__name__}")
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        if any(not part.strip() for part in parts):
            raise InputError("overrides", f"{key!r} is not a setting name such as coarse.n_trials")
        nested = merge(nested, with_value({}, parts, value))
    return nested


def check_overrides(base: Mapping[str, Any], merged: Mapping[str, Any]) -> None:
    """Refuse a merge that changed a deployment-only setting or made a setting name code."""
    for key, why in DEPLOYMENT_ONLY.items():
        if _lookup(merged, key) != _lookup(base, key):
            raise InputError(
                key,
                f"a flow run cannot set {key}: {why}. Only the deployment's own config sets it: change the "
                "config file and serve or deploy it again",
            )
    for key, prefixes in CODE_PREFIXES.items():
        value = _lookup(merged, key)
        if value != _lookup(base, key) and isinstance(value, str) and value.startswith(prefixes):
            raise InputError(
                key,
                f"a flow run cannot set {key} to {value!r}: a source that names code to import comes only from "
                "the deployment's own config",
            )


def config_with_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> PipelineConfig:
    """The deployment's config with a run's overrides merged in, checked, then validated as one config.

    InputError naming the setting for an override that sets a deployment-only setting or is invalid.
    """
    merged = merge(base, nest_overrides(overrides))
    check_overrides(base, merged)
    return validate_config(merged)


def _lookup(data: Mapping[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


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
            '`eval "$(stagetune stack up --prefect)"` (its settings file sets PREFECT_API_URL and the auth '
            "string), or `prefect server start` and export PREFECT_API_URL=http://127.0.0.1:4200/api",
        )
    return str(url)


def serve_pipeline(config: PipelineConfig, cron: str, name: str | None = None) -> None:
    """Register the deployment `stagetune/<name>` with `cron` and run its flow runs until interrupted.

    The name defaults to the config's. Trials run on the task runner the config (with a run's
    overrides) names (`execution.task_runner`), for scheduled and triggered runs alike.
    """
    # Imported here: Prefect reads its settings at import, after the command has set them.
    from flows.deployment import tune_deployment

    tune_deployment.serve(
        name=name or config.name,
        cron=cron,
        parameters=deployment_parameters(config),
        description=f"Staged tuning of {config.name!r} ({config.data.source}, {config.model.family}).",
        tags=["stagetune"],
    )
