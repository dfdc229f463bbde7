"""Prefect task wrapper of stage 2."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import PipelineConfig
from schemas.results import SampleResult, SanityResult
from stagetune.stages.sanity_stage import sanity_stage
from stagetune.tracking.run_tree import RunTree


@task(name="sanity-gate", cache_policy=NO_CACHE)
def sanity_check(config: PipelineConfig, sample: SampleResult, tree: RunTree) -> SanityResult:
    """Initial loss, overfit a tiny subset, LR range test, baseline fit; recorded in MLflow."""
    return sanity_stage(config, sample, tree)
