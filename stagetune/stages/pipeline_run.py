"""Opening and closing a pipeline's parent MLflow run; where its local files go."""

import datetime as dt
import platform
import secrets
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from schemas.config import PipelineConfig
from schemas.pipeline import PipelineResult
from stagetune.settings import load_settings
from stagetune.tracking.run_tree import (
    RunEnd,
    RunTree,
    end_run,
    ensure_experiment,
    flatten,
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
    """`tracking.uri`, else the runtime settings' tracking URI, else a local SQLite store in the workdir."""
    uri = config.tracking.uri or load_settings().tracking_uri
    if uri and uri.startswith("sqlite:///"):
        # A local store keeps its artifacts beside it, not in ./mlruns of whatever folder runs it.
        database = Path(uri.removeprefix("sqlite:///")).resolve()
        return TrackingTarget(uri, (database.parent / "mlartifacts").as_uri())
    if uri:
        return TrackingTarget(uri, None)
    workdir = Path(config.execution.workdir).resolve()
    return TrackingTarget(f"sqlite:///{workdir / 'mlflow.db'}", (workdir / "mlartifacts").as_uri())


def new_run_dir(config: PipelineConfig) -> Path:
    """A fresh folder for this run's stage outputs: <workdir>/runs/<name>-<UTC time>-<random>."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = Path(config.execution.workdir).resolve() / "runs" / f"{config.name}-{stamp}-{secrets.token_hex(3)}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def open_pipeline_run(config: PipelineConfig, run_dir: Path) -> RunTree:
    """Create the parent run: every config setting as a param, the config itself as JSON."""
    target = resolve_tracking(config)
    if target.tracking_uri.startswith("sqlite:///"):
        Path(config.execution.workdir).resolve().mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=target.tracking_uri)
    experiment_id = ensure_experiment(client, config.tracking.experiment, target.artifact_location)
    tags = {
        "stagetune.run_dir": str(run_dir),
        "stagetune.seed": str(config.seed),
        "stagetune.python": platform.python_version(),
    }
    tree = start_parent_run(
        target.tracking_uri, experiment_id, config.name, flatten(config.model_dump(mode="json")), tags
    )
    log_model_json(client, tree.parent_run_id, config, "config/pipeline_config.json")
    return tree


def close_pipeline_run(tree: RunTree, result: PipelineResult, status: RunEnd) -> None:
    """Attach the pipeline result and end the parent run."""
    client = tree.client
    log_model_json(client, tree.parent_run_id, result, "results/pipeline.json")
    log_tags(client, tree.parent_run_id, {"stagetune.status": result.status})
    if result.best_hyperparams is not None:
        best = {f"best.{k}": v for k, v in result.best_hyperparams.model_dump(mode="json").items()}
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
