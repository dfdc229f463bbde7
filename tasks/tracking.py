"""Prefect task wrappers of the pipeline's parent MLflow run."""

from typing import Any

from prefect import State, task
from prefect.cache_policies import NO_CACHE

from schemas.config import PipelineConfig
from schemas.pipeline import PipelineResult
from stagetune.errors import StoreError
from stagetune.run_store import PipelineRun
from stagetune.stages.pipeline_run import close_pipeline_run, open_pipeline_run
from stagetune.tracking.run_tree import RunEnd, RunTree


# Not retried by Prefect: the MLflow calls inside retry on their own, and a retry after a partial
# failure would create a second parent run.
@task(name="open-mlflow-run", cache_policy=NO_CACHE)
def open_tracking(config: PipelineConfig, run: PipelineRun) -> RunTree:
    """Create the parent MLflow run of this pipeline run, or reopen a resumed run's."""
    return open_pipeline_run(config, run)


def _not_a_store_fault(task: object, task_run: object, state: State[Any]) -> bool:
    """Retry unless the store failed permanently (read-only, disk full, ...): waiting cannot fix that."""
    return not isinstance(state.data, StoreError)


# I/O only, so Prefect may retry it once more after the client's own retry window (tracking.io_retry_seconds).
@task(
    name="close-mlflow-run",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=30,
    retry_condition_fn=_not_a_store_fault,
)
def close_tracking(tree: RunTree, result: PipelineResult, status: RunEnd) -> None:
    """Attach the pipeline result to the parent run and end it."""
    close_pipeline_run(tree, result, status)
