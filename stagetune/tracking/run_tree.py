"""The MLflow run tree of one pipeline run: one parent, a child per stage, a grandchild per trial.

Everything goes through `MlflowClient` with explicit run ids: `mlflow.start_run(nested=True)` keeps
its active-run stack per thread, so inside Prefect's worker threads it would create top-level runs.
Metrics are sent with `log_batch` (one call per flush): a server round trip per metric is far slower.
The tree's client retries transient failures (server or object store briefly unreachable) for up
to `io_retry_seconds`: see `stagetune.tracking.io_retry`.
"""

import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from mlflow.utils.validation import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
)
from pydantic import BaseModel

from schemas.results import EpochRecord
from schemas.stages import Stage
from stagetune.tracking.io_retry import DEFAULT_RETRY_SECONDS, RetryingClient

RunEnd = Literal["FINISHED", "FAILED", "KILLED"]

STAGE_TAG = "stagetune.stage"
TRIAL_TAG = "stagetune.trial"
PIPELINE_TAG = "stagetune.pipeline"
# The experiment's kind as MLflow records it: "custom_model_development" is the kind it calls "Machine
# learning" (runs, metrics, models). MLflow 3.17's UI no longer opens the view by it: the addresses
# stagetune prints ask for the model-training view (stagetune.ci_summary.MODEL_TRAINING_VIEW).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


@dataclass(frozen=True)
class RunTree:
    """Handle on one pipeline's runs in one experiment (plain values: safe to pass to tasks and Dask workers).

    `io_retry_seconds`: how long `client` retries a call while the server or its store is unreachable.
    """

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    io_retry_seconds: float = DEFAULT_RETRY_SECONDS

    @property
    def client(self) -> RetryingClient:
        """A client for this tree's store that retries brief outages (cheap to create; safe from any thread)."""
        return RetryingClient(self.tracking_uri, retry_seconds=self.io_retry_seconds)

    def start_stage(self, stage: Stage, start_time_ms: int | None = None) -> str:
        """Create the nested run of one stage and return its id."""
        tags = {STAGE_TAG: stage}
        return start_child_run(self.client, self.experiment_id, self.parent_run_id, stage, tags, start_time_ms)

    def start_trial(
        self, stage_run_id: str, stage: Stage, number: int, study: str, start_time_ms: int | None = None
    ) -> str:
        """Create the nested run of one trial under its stage run and return its id."""
        tags = {STAGE_TAG: stage, TRIAL_TAG: str(number), "stagetune.study": study}
        name = f"{stage}-trial-{number}"
        return start_child_run(self.client, self.experiment_id, stage_run_id, name, tags, start_time_ms)


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of experiment `name`, created (with `artifact_location`, if given) when missing; marked as a
    model-training experiment unless someone chose its kind (see EXPERIMENT_KIND_TAG)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            tags = {EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
            return str(client.create_experiment(name, artifact_location=artifact_location, tags=tags))
        except MlflowException as error:  # created meanwhile: by another pipeline, or by a retried request
            if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise MlflowException(f"experiment {name!r} exists and yet was not found (deleted meanwhile?)")
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # made by an older stagetune, or by hand
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return str(experiment.experiment_id)


def start_parent_run(
    tracking_uri: str,
    experiment_id: str,
    name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    io_retry_seconds: float = DEFAULT_RETRY_SECONDS,
) -> RunTree:
    """Create the pipeline's parent run with its params and tags; return the tree handle."""
    client = RetryingClient(tracking_uri, retry_seconds=io_retry_seconds)
    run = client.create_run(experiment_id, run_name=name, tags={PIPELINE_TAG: name, **tags})
    tree = RunTree(tracking_uri, experiment_id, run.info.run_id, io_retry_seconds)
    log_params(client, tree.parent_run_id, params)
    return tree


def start_child_run(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    name: str,
    tags: Mapping[str, str],
    start_time_ms: int | None = None,
) -> str:
    """Create a run nested under `parent_run_id` (MLflow's parent tag) and return its id."""
    all_tags = {MLFLOW_PARENT_RUN_ID: parent_run_id, MLFLOW_RUN_NAME: name, **tags}
    run = client.create_run(experiment_id, start_time=start_time_ms, run_name=name, tags=all_tags)
    return str(run.info.run_id)


def end_run(client: MlflowClient, run_id: str, status: RunEnd = "FINISHED", end_time_ms: int | None = None) -> None:
    """Close a run with a final status."""
    client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.from_string(status)), end_time=end_time_ms)


def now_ms() -> int:
    """Wall-clock time in MLflow's unit."""
    return int(time.time() * 1000)


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params in batches of 100 (the server's limit), values cut to MLflow's maximum length."""
    items = [Param(key, _param_value(value)) for key, value in params.items()]
    for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=items[start : start + MAX_PARAMS_TAGS_PER_BATCH], synchronous=True)


def log_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    """Set several tags in one call."""
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)


def log_metrics(client: MlflowClient, run_id: str, rows: Iterable[tuple[str, float, int]]) -> None:
    """Log (name, value, step) rows with as few `log_batch` calls as MLflow's limits allow."""
    now = now_ms()
    metrics = [Metric(name, float(value), now, step) for name, value, step in rows]
    for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH], synchronous=True)


def log_record(
    client: MlflowClient,
    run_id: str,
    params: Mapping[str, Any],
    metrics: Iterable[tuple[str, float, int]],
    tags: Mapping[str, str],
) -> None:
    """Params, (name, value, step) metric rows and tags in one `log_batch` when MLflow's per-call limits
    allow (each call is a database transaction or a server round trip), else in as few as they allow."""
    rows = list(metrics)
    fits = (
        max(len(params), len(tags)) <= MAX_PARAMS_TAGS_PER_BATCH
        and len(rows) <= MAX_METRICS_PER_BATCH
        and len(params) + len(tags) + len(rows) <= MAX_ENTITIES_PER_BATCH
    )
    if not fits:
        log_params(client, run_id, params)
        log_metrics(client, run_id, rows)
        log_tags(client, run_id, tags)
        return
    now = now_ms()
    client.log_batch(
        run_id,
        metrics=[Metric(name, float(value), now, step) for name, value, step in rows],
        params=[Param(key, _param_value(value)) for key, value in params.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
        synchronous=True,
    )


def epoch_metric_rows(history: Sequence[EpochRecord], prefix: str = "") -> list[tuple[str, float, int]]:
    """The per-epoch metrics of a training history: train/loss, val/loss, lr and the task's metrics
    (train/acc, val/acc, val/balanced_acc; or train/rmse, train/r2, val/rmse, val/mae, val/r2)."""
    rows: list[tuple[str, float, int]] = []
    for record in history:
        values: dict[str, float | None] = {
            "train/loss": record.train_loss,
            "val/loss": record.val_loss,
            **record.metrics,
            "lr": record.lr,
        }
        rows.extend((prefix + name, value, record.epoch) for name, value in values.items() if value is not None)
    return rows


def log_model_json(client: MlflowClient, run_id: str, model: BaseModel, artifact_file: str) -> None:
    """Write a result model as an indented JSON artifact."""
    client.log_text(run_id, model.model_dump_json(indent=2), artifact_file)


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:MAX_PARAM_VAL_LENGTH]


@contextmanager
def stage_run(tree: RunTree, stage: Stage) -> Iterator[str]:
    """A stage's nested run, ended FINISHED on success and FAILED (then re-raised) on an exception."""
    run_id = tree.start_stage(stage)
    try:
        yield run_id
    except BaseException:
        end_run(tree.client, run_id, "FAILED")
        raise
    end_run(tree.client, run_id, "FINISHED")
