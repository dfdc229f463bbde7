"""Prefect task wrappers of the stage bodies between the searches: setup, narrowing, final training."""

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import PipelineConfig
from schemas.final import FinalResult
from schemas.hyperparams import HyperParams
from schemas.pipeline import SearchStageResult
from schemas.results import SampleResult, SanityResult
from schemas.search import NarrowingReport
from schemas.search_space import SearchSpace
from stagetune.search.diagnosis_shift import shift_by_diagnosis
from stagetune.search.narrowing import narrow
from stagetune.stages.final_stage import final_stage
from stagetune.stages.search_session import SearchSession
from stagetune.stages.search_stage import start_coarse, start_refine
from stagetune.tracking.run_tree import RunTree


@task(name="start-coarse-search", cache_policy=NO_CACHE)
def open_coarse(
    config: PipelineConfig, sample: SampleResult, sanity: SanityResult | None, tree: RunTree, run_name: str
) -> SearchSession:
    """Create the coarse study and its stage run."""
    return start_coarse(config, sample, sanity, tree, run_name)


@task(name="narrow-search-space", cache_policy=NO_CACHE)
def narrow_space(config: PipelineConfig, coarse: SearchStageResult) -> tuple[SearchSpace, NarrowingReport]:
    """New ranges around the best coarse trials, moved by their shared diagnosis (pure functions of coarse)."""
    space, report = narrow(coarse.space, coarse.trials, config.search.direction, config.refine.narrowing, config.model)
    return shift_by_diagnosis(coarse.space, space, report, coarse.trials, config.refine.diagnosis_shift, config.model)


@task(name="start-refinement", cache_policy=NO_CACHE)
def open_refine(
    config: PipelineConfig,
    sample: SampleResult,
    tree: RunTree,
    run_name: str,
    narrowed: tuple[SearchSpace, NarrowingReport],
    coarse: SearchStageResult,
) -> SearchSession:
    """Create the warm-started refinement study and its stage run, with the narrowing explained in it."""
    space, report = narrowed
    session = start_refine(config, sample, tree, run_name, space, coarse)
    session.record_narrowing(report)
    return session


@task(name="final-training", cache_policy=NO_CACHE)
def train_final(
    config: PipelineConfig, sample: SampleResult, hp: HyperParams, tree: RunTree, run_dir: Path, search_compute: float
) -> FinalResult:
    """Full-data training (an ensemble within its share of `search_compute`), one test evaluation, registry and
    champion decision."""
    return final_stage(config, sample, hp, tree, run_dir, search_compute)
