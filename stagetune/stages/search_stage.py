"""Stages 3 and 4: open the coarse and the refinement study (a `SearchSession` each) and their trial data.

The trials themselves run through `stagetune.stages.search_loop.run_trials`; nothing here imports Prefect.
"""

import math

import numpy as np

from schemas.config import PipelineConfig
from schemas.pipeline import SearchStageResult
from schemas.results import SampleResult, SanityResult
from schemas.search_space import FloatParam, SearchSpace
from schemas.stages import Stage
from stagetune.data.augment import pixels_of
from stagetune.data.sampling import stratified_subsample
from stagetune.data.source import LoadOptions
from stagetune.data.stage import load_stage_arrays
from stagetune.search.study import make_sampler
from stagetune.stages.search_session import SearchSession
from stagetune.stages.search_summary import top_trials
from stagetune.stages.trial import TrialData
from stagetune.task import full_task_for, task_for
from stagetune.tracking.run_tree import RunTree
from stagetune.training.loaders import load_options


def start_coarse(
    config: PipelineConfig, sample: SampleResult, sanity: SanityResult | None, tree: RunTree, run_name: str
) -> SearchSession:
    """Stage 3: a random/QMC study over the wide space, few epochs, a stratified share of the sampled rows,
    with the champion's and the last run's best points first."""
    space = config.space
    if config.coarse.center_lr_on_range_test and sanity is not None and sanity.lr_suggestion:
        space = centre_learning_rates(space, config.model.baseline.optimizer, sanity.lr_suggestion)
    data = trial_data(
        sample,
        config.coarse.train_fraction,
        config.seed,
        full=False,
        loss=config.training.loss,
        options=load_options(config.execution),
    )
    session = SearchSession.open(
        config,
        tree,
        Stage.COARSE,
        f"{config.search.study_name or run_name}-coarse",
        make_sampler(config.coarse.sampler, config.seed, sync_window=config.search.sync_window),
        "none",
        space,
        config.coarse.n_trials,
        config.coarse.epochs,
        data,
    )
    session.enqueue_reused()
    session.publish(sample, config.coarse.train_fraction, False, config.coarse.sampler)
    return session


def start_refine(
    config: PipelineConfig,
    sample: SampleResult,
    tree: RunTree,
    run_name: str,
    space: SearchSpace,
    coarse: SearchStageResult,
) -> SearchSession:
    """Stage 4: TPE/GP over the narrowed space, warm-started with the best coarse trials, with pruning."""
    full = config.refine.train_data == "full"
    options = load_options(config.execution)
    data = trial_data(sample, 1.0, config.seed, full=full, loss=config.training.loss, options=options)
    seeds = top_trials(coarse.trials, config.search.direction, config.refine.warm_start)
    startup = max(len(seeds), min(10, max(1, config.refine.n_trials // 3)))
    session = SearchSession.open(
        config,
        tree,
        Stage.REFINE,
        f"{config.search.study_name or run_name}-refine",
        make_sampler(config.refine.sampler, config.seed + 1, startup, config.search.sync_window),
        config.refine.pruner,
        space,
        config.refine.n_trials,
        config.refine.epochs,
        data,
    )
    session.enqueue_warm_start(seeds)
    session.publish(sample, 1.0, full, config.refine.sampler)
    return session


def trial_data(
    sample: SampleResult,
    fraction: float,
    seed: int,
    full: bool,
    loss: str = "auto",
    options: LoadOptions | None = None,
) -> TrialData:
    """The rows a stage's trials train on: all or a stratified share of the sampled rows, or the full split.

    `options` (DataLoader workers, pinned memory) apply to an indexed source's lazily read rows.
    """
    arrays = load_stage_arrays(sample, options)
    if full:
        task = full_task_for(sample, loss)
        return TrialData(
            arrays.X_train, arrays.y_train, arrays.X_val, arrays.y_val, sample.input_shape, task, pixels_of(sample)
        )
    task = task_for(sample, loss)
    x, y = arrays.X_train_sampled, arrays.y_train_sampled
    if fraction < 1.0:
        keep = stratified_subsample(task.strata(y), max(1, round(fraction * len(y))), np.random.default_rng(seed))
        x, y = x[keep], y[keep]
    return TrialData(x, y, arrays.X_val_sampled, arrays.y_val_sampled, sample.input_shape, task, pixels_of(sample))


def centre_learning_rates(space: SearchSpace, optimizer: str, suggestion: float) -> SearchSpace:
    """Shift every optimizer's log learning-rate range so the baseline optimizer's is centred on `suggestion`."""
    reference = space.learning_rate.get(optimizer)  # type: ignore[call-overload]
    if reference is None:
        return space
    shift = math.log10(suggestion) - (math.log10(reference.low) + math.log10(reference.high)) / 2
    moved = {
        name: FloatParam(low=max(1e-6, param.low * 10**shift), high=min(1.0, param.high * 10**shift), scale=param.scale)
        for name, param in space.learning_rate.items()
    }
    return space.model_copy(update={"learning_rate": moved})
