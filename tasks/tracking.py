"""Prefect task wrappers of the pipeline's parent MLflow run."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import PipelineConfig
from schemas.pipeline import PipelineResult
from stagetune.run_store import PipelineRun
from stagetune.stages.pipeline_run import close_pipeline_run, open_pipeline_run
from stagetune.tracking.run_tree import RunEnd, RunTree


# Not retried by Prefect: the MLflow calls inside retry on their own, and a retry after a partial
# failure would create a second parent run.
@task(name="open-mlflow-run", cache_policy=NO_CACHE)
def open_tracking(config: PipelineConfig, run: PipelineRun) -> RunTree:
    """Create the parent MLflow run of this pipeline run, or reopen a resumed run's."""
    return open_pipeline_run(config, run)


# I/O only, so Prefect may retry it once more after the client's own retry window (tracking.io_retry_seconds).
@task(name="close-mlflow-run", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=30)
def close_tracking(tree: RunTree, result: PipelineResult, status: RunEnd) -> None:
    """Attach the pipeline result to the parent run and end it."""
    close_pipeline_run(tree, result, status)
