"""`stagetune worker`: join a running pipeline's search studies and run their trials.

A pipeline started with `search.study_name: NAME` and a shared Optuna storage (PostgreSQL) creates
the studies NAME-coarse, then NAME-refine. Workers started with the same config and `--study NAME`
(on any machine that reaches the storage and the MLflow server) prepare the same data, then pull
trials from each study until its budget is used up; the budget is exact across all processes.
"""

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from schemas.config import PipelineConfig
from schemas.pipeline import SharedStudyPlan
from schemas.results import SampleResult
from schemas.search import TrialRecord
from schemas.stages import SEARCH_STAGES
from stagetune import progress
from stagetune.data.defaults import with_data_defaults
from stagetune.data.stage import run_sample_stage
from stagetune.errors import InputError
from stagetune.search.liveness import Liveness
from stagetune.search.study import liveness_of, make_pruner, make_sampler, rdb_storage, storage_url
from stagetune.stages import search_stage
from stagetune.stages.search_stage import SearchPlan, trial_data
from stagetune.stages.shared_study import read_plan
from stagetune.stages.trial import TrialContext, run_trial
from stagetune.tracking.run_tree import RunTree
from stagetune.training.loaders import load_options


@dataclass
class WorkerSummary:
    """What one worker did: trials run per stage."""

    trials: dict[str, list[TrialRecord]] = field(default_factory=dict)


def run_worker(
    config: PipelineConfig, study: str, wait_seconds: float = 600.0, poll_seconds: float = 2.0
) -> WorkerSummary:
    """Run trials of `<study>-coarse` then `<study>-refine` until their budgets are used up.

    Waits up to `wait_seconds` for each study to appear (the refinement study is created only once
    the coarse stage has finished); a stage whose study never appears ends the worker.
    """
    storage = storage_url(config)
    workdir = Path(config.execution.workdir).resolve() / "workers" / f"{study}-{os.getpid()}"
    sample = run_sample_stage(config, workdir)
    config = with_data_defaults(config, sample)
    summary = WorkerSummary()
    reporter = progress.current()
    for stage in SEARCH_STAGES:
        loaded = _wait_for_study(f"{study}-{stage}", storage, liveness_of(config), wait_seconds, poll_seconds)
        if loaded is None:
            break
        optuna_study, shared = loaded
        if shared.sampled_fingerprint != sample.sampled_fingerprint:
            raise InputError(
                "CONFIG",
                f"this worker's data ({sample.sampled_fingerprint[:12]}) differ from the study's "
                f"({shared.sampled_fingerprint[:12]}): start the worker with the pipeline's config and seed",
            )
        plan = _worker_plan(config, optuna_study, shared, storage, sample)
        reporter.stage_started(stage, f"worker on {optuna_study.study_name}", total=shared.n_trials)
        records = summary.trials.setdefault(stage, [])
        while (asked := search_stage.ask(plan)) is not None:
            trial, hp, params = asked
            report = search_stage.pruning_reporter(trial, plan.storage)
            record = run_trial(plan.context, trial.number, hp, params, report)
            search_stage.tell(plan, trial, record)
            records.append(record)
            reporter.stage_advanced(stage, f"#{record.number} {record.state.lower()}")
        reporter.stage_finished(stage, f"worker ran {len(records)} trial(s) of {optuna_study.study_name}")
    return summary


def _worker_plan(
    config: PipelineConfig, study: optuna.Study, shared: SharedStudyPlan, storage: str, sample: SampleResult
) -> SearchPlan:
    options = load_options(config.execution)
    data = trial_data(
        sample, shared.train_fraction, config.seed, full=shared.full_data, loss=config.training.loss, options=options
    )
    tree = RunTree(shared.tracking_uri, shared.experiment_id, shared.parent_run_id, config.tracking.io_retry_seconds)
    context = TrialContext(config, tree, shared.stage, shared.stage_run_id, study.study_name, shared.epochs, data)
    return SearchPlan(
        shared.stage,
        study,
        shared.space,
        shared.n_trials,
        context,
        shared.sampler,
        shared.pruner,
        storage,
        liveness_of(config),
    )


def _wait_for_study(
    name: str, storage: str, liveness: Liveness, wait_seconds: float, poll_seconds: float
) -> tuple[optuna.Study, SharedStudyPlan] | None:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            study = optuna.load_study(study_name=name, storage=rdb_storage(storage, liveness))
        except KeyError:  # not created yet
            study = None
        shared = read_plan(study) if study is not None else None
        if study is not None and shared is not None:
            # The stage's own sampler: its draws are seeded per trial number, so this worker never
            # proposes what the pipeline or another worker drew, and Sobol points continue one sequence.
            seed = os.getpid() if shared.sampler_seed is None else shared.sampler_seed
            startup = shared.n_startup_trials or 10
            sampler = make_sampler(shared.sampler, seed=seed, n_startup_trials=startup)  # type: ignore[arg-type]
            pruner = make_pruner(shared.pruner, shared.epochs)  # type: ignore[arg-type]
            loaded = optuna.load_study(
                study_name=name, storage=rdb_storage(storage, liveness), sampler=sampler, pruner=pruner
            )
            return loaded, shared
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll_seconds)
