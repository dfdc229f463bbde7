"""A search stage's study as the meeting point of several processes.

The stage that creates a study publishes a `SharedStudyPlan` on it (space, budget, data share,
MLflow run ids); every process that runs a trial stores the trial's `TrialRecord` on it. The stage
result is then read back from the study, whoever ran each trial.
"""

import os
import socket
import time
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from schemas.pipeline import SharedStudyPlan
from schemas.results import SampleResult
from schemas.search import TrialRecord
from stagetune.search.space import hyperparams_from_params

if TYPE_CHECKING:
    from stagetune.stages.search_stage import SearchPlan

PLAN_ATTR = "stagetune_plan"
RECORD_ATTR = "stagetune_record"
WORKER_ID = f"{socket.gethostname()}-{os.getpid()}"


def publish_plan(plan: "SearchPlan", sample: SampleResult, fraction: float, full: bool, sampler: str) -> None:
    """Store what a joining worker needs to run this stage's trials exactly as the stage does."""
    tree = plan.context.tree
    shared = SharedStudyPlan(
        stage=plan.stage,
        n_trials=plan.n_trials,
        epochs=plan.context.epochs,
        space=plan.space,
        train_fraction=fraction,
        full_data=full,
        sampler=sampler,
        pruner=plan.pruner,
        objective=plan.context.config.search.objective,
        tracking_uri=tree.tracking_uri,
        experiment_id=tree.experiment_id,
        parent_run_id=tree.parent_run_id,
        stage_run_id=plan.context.stage_run_id,
        sample_fingerprint=sample.fingerprint,
        sampled_fingerprint=sample.sampled_fingerprint,
    )
    plan.study.set_user_attr(PLAN_ATTR, shared.model_dump(mode="json"))


def read_plan(study: optuna.Study) -> SharedStudyPlan | None:
    """The plan a stage published on `study`, or None (not a stagetune study, or not yet published)."""
    data = study.user_attrs.get(PLAN_ATTR)
    return None if data is None else SharedStudyPlan.model_validate(data)


def wait_until_finished(study: optuna.Study, poll_seconds: float = 1.0) -> None:
    """Block while any trial of the study (another process's too) is still running."""
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        time.sleep(poll_seconds)


def study_records(plan: "SearchPlan") -> list[TrialRecord]:
    """Every trial of the stage's study as a record, in trial-number order, whichever process ran it."""
    config = plan.context.config
    records = []
    for trial in plan.study.get_trials(deepcopy=False):
        stored = trial.user_attrs.get(RECORD_ATTR)
        if stored is not None:
            records.append(TrialRecord.model_validate(stored))
            continue
        # Told without a record: the process running it stopped before recording (e.g. killed).
        hp = hyperparams_from_params(trial.params, plan.space, config.model.baseline, config.model.family)
        records.append(
            TrialRecord(
                number=trial.number,
                state="FAIL" if trial.state == TrialState.FAIL else "RUNNING",
                hyperparams=hp,
                params=dict(trial.params),
                fail_reason=str(trial.user_attrs.get("fail_reason", "no result recorded: its process stopped")),
            )
        )
    return sorted(records, key=lambda r: r.number)
