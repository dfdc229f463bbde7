"""What the report reads from and writes to MLflow: the run's results, config, curves and versions."""

import json
import platform
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from schemas.config import PipelineConfig
from schemas.pipeline import PipelineResult
from schemas.results import EpochRecord
from stagetune.errors import InputError
from stagetune.settings import load_settings
from stagetune.tracking.run_tree import log_tags

RESULT_ARTIFACT = "results/pipeline.json"
CONFIG_ARTIFACT = "config/pipeline_config.json"
REPORT_FOLDER = "report"
VERSION_TAG_PREFIX = "stagetune.version."
VERSIONED_PACKAGES = ("stagetune", "torch", "optuna", "mlflow", "prefect", "numpy", "scikit-learn")
_EPOCH_FIELDS = {"train/loss": "train_loss", "val/loss": "val_loss", "lr": "lr"}
# The task's per-epoch metrics (classification, regression): kept in EpochRecord.metrics by name.
_TASK_METRICS = ("train/acc", "val/acc", "val/balanced_acc", "train/rmse", "train/r2", "val/rmse", "val/mae", "val/r2")


def resolve_tracking_uri(explicit: str | None) -> str:
    """`explicit`, else the runtime settings' tracking URI, else the local default store (which must exist)."""
    uri = explicit or load_settings().tracking_uri
    if uri:
        return uri
    store = Path(PipelineConfig().execution.workdir).resolve() / "mlflow.db"
    if not store.is_file():
        raise InputError(
            "--tracking-uri",
            f"no local MLflow store at {store}: pass --tracking-uri (e.g. sqlite:///path/mlflow.db or "
            "http://host:5000) or set MLFLOW_TRACKING_URI",
        )
    return f"sqlite:///{store}"


def load_pipeline_result(client: MlflowClient, run_id: str) -> PipelineResult:
    """The PipelineResult a finished run attached to its parent MLflow run."""
    try:
        client.get_run(run_id)
    except MlflowException as error:
        raise InputError("RUN_ID", f"no MLflow run {run_id!r} in this tracking store: {error.message}") from None
    text = read_artifact_text(client, run_id, RESULT_ARTIFACT)
    if text is None:
        raise InputError(
            "RUN_ID",
            f"run {run_id!r} has no {RESULT_ARTIFACT}: give the id of a pipeline's parent run that has finished",
        )
    return PipelineResult.model_validate_json(text)


def load_run_config(client: MlflowClient, run_id: str) -> dict[str, Any] | None:
    """The run's config as it was validated (JSON data), or None when the artifact is missing."""
    text = read_artifact_text(client, run_id, CONFIG_ARTIFACT)
    return None if text is None else dict(json.loads(text))


def read_artifact_text(client: MlflowClient, run_id: str, path: str) -> str | None:
    """One text artifact of a run, or None when it does not exist."""
    with tempfile.TemporaryDirectory(prefix="stagetune-report-") as folder:
        try:
            local = client.download_artifacts(run_id, path, folder)
        except (MlflowException, OSError):
            return None
        return Path(local).read_text(encoding="utf-8")


def trial_history(client: MlflowClient, run_id: str) -> list[EpochRecord]:
    """A run's per-epoch curves rebuilt from its MLflow metric history (step = epoch)."""
    by_epoch: dict[int, dict[str, float]] = {}
    metrics: dict[int, dict[str, float]] = {}
    # One call for the names the run has, then a history call for each of those only: a classifier
    # has none of the regression metrics, and each call is a query (or a server round trip).
    logged = set(client.get_run(run_id).data.metrics)
    for metric, field in _EPOCH_FIELDS.items():
        for point in client.get_metric_history(run_id, metric) if metric in logged else []:
            by_epoch.setdefault(point.step, {})[field] = point.value
    for metric in (m for m in _TASK_METRICS if m in logged):
        for point in client.get_metric_history(run_id, metric):
            metrics.setdefault(point.step, {})[metric] = point.value
    records = []
    for epoch in sorted(by_epoch):
        values = by_epoch[epoch]
        if {"train_loss", "lr"} <= set(values) and metrics.get(epoch):
            records.append(EpochRecord(epoch=epoch, seconds=0.0, metrics=metrics[epoch], **values))
    return records


def current_versions() -> dict[str, str]:
    """Python's and the main packages' versions in this process."""
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def recorded_versions(client: MlflowClient, run_id: str) -> dict[str, str]:
    """Versions stored on the parent run (by `record_versions`, or the python tag every run has)."""
    tags = client.get_run(run_id).data.tags
    versions = {k.removeprefix(VERSION_TAG_PREFIX): v for k, v in tags.items() if k.startswith(VERSION_TAG_PREFIX)}
    if "python" not in versions and "stagetune.python" in tags:
        versions["python"] = tags["stagetune.python"]
    return versions


def record_versions(client: MlflowClient, run_id: str) -> None:
    """Store this process's versions on the run, so a report made later shows the run's, not its own."""
    log_tags(client, run_id, {VERSION_TAG_PREFIX + name: v for name, v in current_versions().items()})


def log_report_files(client: MlflowClient, run_id: str, paths: Sequence[Path]) -> None:
    """Attach the report files to the run under `report/`."""
    for path in paths:
        client.log_artifact(run_id, str(path), REPORT_FOLDER)
