"""The entry point of the tuning flow's deployments (`stagetune serve`, prefect.yaml).

A deployment stores its own pipeline config as the parameter `config`; a flow run may pass only
`overrides`, merged onto it (stagetune.deploy). Prefect merges a run's parameters over the
deployment's key by key, so a run that passes `config` would replace the whole config: the flow
reads the deployment's stored config back from the API and refuses a run whose `config` differs.
`config` is plain JSON data here, not a `PipelineConfig`: nothing of a caller's config is
validated (an import path would be imported by the check) before it is refused.
"""

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from prefect import flow

from flows.tune_pipeline import configured_pipeline
from schemas.pipeline import PipelineResult
from stagetune.config_loading import check_environment
from stagetune.deploy import config_with_overrides
from stagetune.errors import InputError


@flow(name="stagetune")
def tune_deployment(config: dict[str, Any], overrides: dict[str, Any] | None = None) -> PipelineResult:
    """Run the pipeline on the deployment's config with this run's `overrides` merged in.

    Fails before any stage or MLflow run (InputError naming the setting) when the run replaces the
    config, sets a deployment-only setting (`model.import_path`, ...) or an invalid value.
    """
    settings = config_with_overrides(own_config(config), overrides or {})
    check_environment(settings)
    return configured_pipeline(settings.execution)(settings)


def own_config(given: Mapping[str, Any]) -> dict[str, Any]:
    """The config stored on this run's deployment; `given` must be it (a run cannot replace it).

    Outside a deployment (the flow called directly, as in tests) `given` is the config.
    """
    from prefect import get_client
    from prefect.runtime import deployment

    deployment_id = deployment.id
    if deployment_id is None:
        return dict(given)
    with get_client(sync_client=True) as client:
        stored = client.read_deployment(UUID(str(deployment_id))).parameters.get("config")
    if not isinstance(stored, dict):
        raise InputError("config", "this deployment stores no config: serve or deploy it again with its config")
    if dict(given) != stored:
        raise InputError(
            "config",
            "a flow run cannot replace the deployment's config: pass only the settings to change, as "
            'overrides (e.g. {"overrides": {"coarse.n_trials": 4}}); code paths such as model.import_path '
            "come only from the deployment's own config",
        )
    return stored
