"""`stagetune worker`: join a running pipeline's search studies and run their trials.

A pipeline started with `search.study_name: NAME` creates the studies NAME-coarse, then NAME-refine,
in its Optuna storage: on one machine the workdir's default journal file, for several a PostgreSQL
storage. Workers started with the same config and `--study NAME` (on any machine that reaches the
storage and the MLflow server) prepare the same data, then pull
trials from each study until its budget is used up; the budget is exact across all processes.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

from schemas.config import PipelineConfig
from schemas.search import TrialRecord
from schemas.stages import SEARCH_STAGES
from stagetune import progress
from stagetune.data.defaults import with_data_defaults
from stagetune.data.stage import run_sample_stage
from stagetune.errors import InputError
from stagetune.search.study import liveness_of, storage_url
from stagetune.stages.search_loop import InlineTrials, run_trials
from stagetune.stages.search_session import SearchSession
from stagetune.stages.search_stage import trial_data
from stagetune.stages.shared_study import wait_for_published_study
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
    the coarse stage has finished); a stage whose study never appears ends the worker. The trials run
    one at a time, through the pipeline's own loop (`stagetune.stages.search_loop.run_trials`).
    """
    storage = storage_url(config)
    workdir = Path(config.execution.workdir).resolve() / "workers" / f"{study}-{os.getpid()}"
    sample = run_sample_stage(config, workdir)
    config = with_data_defaults(config, sample)
    summary = WorkerSummary()
    reporter = progress.current()
    for stage in SEARCH_STAGES:
        name = f"{study}-{stage}"
        loaded = wait_for_published_study(name, storage, liveness_of(config), wait_seconds, poll_seconds)
        if loaded is None:
            break
        optuna_study, shared = loaded
        if shared.sampled_fingerprint != sample.sampled_fingerprint:
            raise InputError(
                "CONFIG",
                f"this worker's data ({sample.sampled_fingerprint[:12]}) differ from the study's "
                f"({shared.sampled_fingerprint[:12]}): start the worker with the pipeline's config and seed",
            )
        options = load_options(config.execution)
        data = trial_data(
            sample,
            shared.train_fraction,
            config.seed,
            full=shared.full_data,
            loss=config.training.loss,
            options=options,
        )
        session = SearchSession.join(config, optuna_study, shared, data)
        reporter.stage_started(stage, f"worker on {name}", total=shared.n_trials)
        # The worker leaves when the budget is used up; the pipeline waits for the last trials and retries.
        run_trials(session, InlineTrials(), concurrency=1, wait_for_others=False)
        summary.trials[stage] = session.records
        reporter.stage_finished(stage, f"worker ran {len(session.records)} trial(s) of {name}")
    return summary
