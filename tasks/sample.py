"""Prefect task wrappers of stage 1."""

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import PipelineConfig
from schemas.results import SampleResult
from schemas.stages import Stage
from stagetune import progress
from stagetune.data.stage import run_sample_stage
from stagetune.models import get_family
from stagetune.stages.sample_stage import image_defaults_summary, record_sample_stage, sample_summary
from stagetune.tracking.run_tree import RunTree


@task(name="sample-and-rebalance", cache_policy=NO_CACHE)
def sample_data(config: PipelineConfig, run_dir: Path) -> SampleResult:
    """Load, split, preprocess and subsample the data; write the arrays under `run_dir`."""
    reporter = progress.current()
    reporter.stage_started(Stage.SAMPLE, f"loading {config.data.source}")
    result = run_sample_stage(config, run_dir / Stage.SAMPLE)
    # The first point the example shape is known: a family that cannot take it is refused before any MLflow run.
    get_family(config.model.family).check_input_shape(result.input_shape)
    reporter.stage_finished(Stage.SAMPLE, sample_summary(result))
    if result.defaults is not None and result.defaults.settings:
        reporter.stage_started("defaults", "image data")
        reporter.stage_finished("defaults", image_defaults_summary(result.defaults))
    return result


# Not retried: a retry after a partial failure would create a second stage run.
@task(name="record-sample-stage", cache_policy=NO_CACHE)
def record_sample(tree: RunTree, result: SampleResult, started_ms: int, ended_ms: int) -> str:
    """Log stage 1's result to its own MLflow run."""
    return record_sample_stage(tree, result, started_ms, ended_ms)
