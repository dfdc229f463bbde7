"""Opening and closing a pipeline's parent MLflow run; where its local files go."""

import platform
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from schemas.config import PipelineConfig
from schemas.pipeline import PipelineResult
from schemas.stages import Stage
from stagetune.errors import InputError
from stagetune.flat_keys import flat_hyperparams, flatten
from stagetune.run_store import PipelineRun
from stagetune.settings import export_client_settings, load_settings
from stagetune.tracking.io_retry import RetryingClient
from stagetune.tracking.run_tree import (
    STAGE_TAG,
    RunEnd,
    RunTree,
    end_run,
    ensure_experiment,
    log_metrics,
    log_model_json,
    log_params,
    log_tags,
    start_parent_run,
)


@dataclass(frozen=True)
class TrackingTarget:
    """Where runs and artifacts go."""

    tracking_uri: str
    artifact_location: str | None


def resolve_tracking(config: PipelineConfig) -> TrackingTarget:
    """`tracking.uri`, else the runtime settings' tracking URI, else a local SQLite store in the workdir.

    The settings' MLflow login goes into the environment, where MLflow's client reads it: flow runs
    started by a Prefect worker never pass through the command that does it otherwise.
    """
    settings = load_settings()
    export_client_settings(settings)
    uri = config.tracking.uri or settings.tracking_uri
    if uri and uri.startswith("sqlite:///"):
        # A local store keeps its artifacts beside it, not in ./mlruns of whatever folder runs it.
        database = Path(uri.removeprefix("sqlite:///")).resolve()
        return TrackingTarget(uri, (database.parent / "mlartifacts").as_uri())
    if uri:
        return TrackingTarget(uri, None)
    workdir = Path(config.execution.workdir).resolve()
    return TrackingTarget(f"sqlite:///{workdir / 'mlflow.db'}", (workdir / "mlartifacts").as_uri())


def open_pipeline_run(config: PipelineConfig, run: PipelineRun) -> RunTree:
    """The parent run: created with every config setting as a param and the config as JSON, or, for a
    resumed run, the one its first attempt created (reopened; interrupted stage runs closed as KILLED)."""
    target = resolve_tracking(config)
    if run.state.parent_run_id is not None:
        return _reopen_pipeline_run(run, target, config.tracking.io_retry_seconds)
    if target.tracking_uri.startswith("sqlite:///"):
        Path(config.execution.workdir).resolve().mkdir(parents=True, exist_ok=True)
    window = config.tracking.io_retry_seconds
    client = RetryingClient(target.tracking_uri, retry_seconds=window)
    experiment_id = ensure_experiment(client, config.tracking.experiment, target.artifact_location)
    tags = {
        "stagetune.run_dir": str(run.dir),
        "stagetune.run": run.dir.name,
        "stagetune.seed": str(config.seed),
        "stagetune.python": platform.python_version(),
    }
    tree = start_parent_run(
        target.tracking_uri, experiment_id, config.name, flatten(config.model_dump(mode="json")), tags, window
    )
    run.update(tracking_uri=tree.tracking_uri, experiment_id=tree.experiment_id, parent_run_id=tree.parent_run_id)
    log_model_json(client, tree.parent_run_id, config, "config/pipeline_config.json")
    return tree


def _reopen_pipeline_run(run: PipelineRun, target: TrackingTarget, io_retry_seconds: float) -> RunTree:
    state = run.state
    assert state.parent_run_id is not None
    assert state.experiment_id is not None
    if state.tracking_uri != target.tracking_uri:
        raise InputError(
            "tracking.uri",
            f"run {state.run} records to {state.tracking_uri}, but this attempt would record to "
            f"{target.tracking_uri}: point MLFLOW_TRACKING_URI / tracking.uri back there, or start a new run (--new)",
        )
    tree = RunTree(target.tracking_uri, state.experiment_id, state.parent_run_id, io_retry_seconds)
    client = tree.client
    try:
        client.get_run(state.parent_run_id)
    except MlflowException as error:
        raise InputError(
            "--resume",
            f"the MLflow run {state.parent_run_id} of run {state.run} cannot be read ({error.error_code}): "
            "it was deleted or the store moved; start a new run (--new)",
        ) from None
    client.update_run(state.parent_run_id, status="RUNNING")
    log_tags(client, state.parent_run_id, {"stagetune.attempts": str(state.attempts)})
    close_interrupted_stage_runs(tree, run.state.stages_done)
    return tree


def close_interrupted_stage_runs(tree: RunTree, stages_done: list[str]) -> list[str]:
    """End as KILLED the stage runs an earlier attempt left behind: running ones, and finished ones of
    stages whose result was not stored (they run again). Search stage runs are reopened instead, when
    their stage continues (`shared_study.resumed_stage_run`). Returns the closed run ids."""
    client = tree.client
    query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{tree.parent_run_id}'"
    closed = []
    for stage_run in client.search_runs([tree.experiment_id], filter_string=query):
        stage = stage_run.data.tags.get(STAGE_TAG)
        redo = stage in (Stage.SAMPLE, Stage.SANITY, Stage.FINAL) and stage not in stages_done
        if stage_run.info.status == "RUNNING" or (redo and stage_run.info.status == "FINISHED"):
            log_tags(client, stage_run.info.run_id, {"stagetune.interrupted": "true"})
            end_run(client, stage_run.info.run_id, "KILLED")
            closed.append(stage_run.info.run_id)
    return closed


def close_pipeline_run(tree: RunTree, result: PipelineResult, status: RunEnd) -> None:
    """Attach the pipeline result and end the parent run."""
    client = tree.client
    log_model_json(client, tree.parent_run_id, result, "results/pipeline.json")
    log_tags(client, tree.parent_run_id, {"stagetune.status": result.status})
    if result.best_hyperparams is not None:
        # The model's own hyperparameters as best.params.<name>, as the trial runs log them.
        best = {f"best.{k}": v for k, v in flat_hyperparams(result.best_hyperparams).items()}
        log_params(client, tree.parent_run_id, best)
    log_metrics(client, tree.parent_run_id, [(f"test/{k}", v, 0) for k, v in result.test_metrics.items()])
    if result.registered_model is not None:
        model = result.registered_model
        log_tags(
            client,
            tree.parent_run_id,
            {"stagetune.model": f"{model.name}/{model.version}", "stagetune.alias": model.alias},
        )
    end_run(client, tree.parent_run_id, status)
