"""A search stage's study as the meeting point of several processes.

The stage that creates a study publishes a `SharedStudyPlan` on it (space, budget, data share,
MLflow run ids); every process that runs a trial stores the trial's `TrialRecord` on it. The stage
result is then read back from the study, whoever ran each trial.
"""

import os
import time

import optuna
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import FrozenTrial, TrialState

from schemas.config import ModelConfig
from schemas.pipeline import SharedStudyPlan
from schemas.search import TrialRecord
from schemas.search_space import SearchSpace
from stagetune.errors import InputError
from stagetune.search.dead_trials import KILLED_REASON
from stagetune.search.liveness import Liveness, worker_id
from stagetune.search.seeding import TrialSeededSampler
from stagetune.search.space import hyperparams_from_params
from stagetune.search.study import make_pruner, make_sampler, open_storage
from stagetune.tracking.run_tree import TRIAL_TAG, RunTree, end_run, log_tags

PLAN_ATTR = "stagetune_plan"
RECORD_ATTR = "stagetune_record"
WORKER_ID = worker_id()


def publish_plan(study: optuna.Study, shared: SharedStudyPlan) -> None:
    """Store what a joining worker needs to run this stage's trials exactly as the stage does (with the
    stage sampler's seeding, so a worker never draws what the stage or another worker drew)."""
    if isinstance(study.sampler, TrialSeededSampler):
        seeding = {"sampler_seed": study.sampler.seed, "n_startup_trials": study.sampler.n_startup_trials}
        shared = shared.model_copy(update=seeding)
    study.set_user_attr(PLAN_ATTR, shared.model_dump(mode="json"))


def read_plan(study: optuna.Study) -> SharedStudyPlan | None:
    """The plan a stage published on `study`, or None (not a stagetune study, or not yet published)."""
    data = study.user_attrs.get(PLAN_ATTR)
    return None if data is None else SharedStudyPlan.model_validate(data)


def wait_for_published_study(
    name: str, storage: str, liveness: Liveness, wait_seconds: float, poll_seconds: float
) -> tuple[optuna.Study, SharedStudyPlan] | None:
    """The study `name` once a stage has published its plan on it, loaded with the stage's own sampler
    and pruner; None when it does not appear within `wait_seconds`."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            study = optuna.load_study(study_name=name, storage=open_storage(storage, liveness))
        except KeyError:  # not created yet
            study = None
        shared = read_plan(study) if study is not None else None
        if study is not None and shared is not None:
            # The stage's own sampler: its draws are seeded per trial number, so this worker never
            # proposes what the pipeline or another worker drew, and Sobol points continue one sequence.
            seed = os.getpid() if shared.sampler_seed is None else shared.sampler_seed
            startup = shared.n_startup_trials or 10
            window = shared.sync_window or 1
            sampler = make_sampler(shared.sampler, seed, startup, window)  # type: ignore[arg-type]
            pruner = make_pruner(shared.pruner, shared.epochs, window)  # type: ignore[arg-type]
            loaded = optuna.load_study(
                study_name=name, storage=open_storage(storage, liveness), sampler=sampler, pruner=pruner
            )
            return loaded, shared
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll_seconds)


def resumed_stage_run(study: optuna.Study, tree: RunTree) -> str | None:
    """The stage run a previous attempt of this pipeline run opened for `study` (reopened as RUNNING), or
    None when the study is new. A study published by another pipeline run is refused."""
    shared = read_plan(study)
    if shared is None:
        return None
    if shared.parent_run_id != tree.parent_run_id:
        raise InputError(
            "search.study_name",
            f"study {study.study_name!r} belongs to another pipeline run (MLflow run {shared.parent_run_id}): "
            "resume that run (stagetune run --resume), or pick a new search.study_name",
        )
    client = tree.client
    if client.get_run(shared.stage_run_id).info.status != "RUNNING":
        client.update_run(shared.stage_run_id, status="RUNNING")
    return shared.stage_run_id


def close_killed_trial_runs(study: optuna.Study, killed: list[FrozenTrial]) -> None:
    """End the MLflow runs of trials whose process died as KILLED (they would stay RUNNING forever)."""
    shared = read_plan(study)
    if shared is None:
        return
    client = RunTree(shared.tracking_uri, shared.experiment_id, shared.parent_run_id).client
    for trial in killed:
        query = (
            f"tags.`stagetune.study` = '{study.study_name}' and tags.`{TRIAL_TAG}` = '{trial.number}' "
            "and attributes.status = 'RUNNING'"
        )
        for run in client.search_runs([shared.experiment_id], filter_string=query):
            _end_killed(client, run.info.run_id, f"{KILLED_REASON} (Optuna trial {trial.number} marked FAIL)")


def close_orphan_trial_runs(tree: RunTree, stage_run_id: str) -> int:
    """End as KILLED every trial run of a finished stage still RUNNING (its process died unnoticed)."""
    client = tree.client
    query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{stage_run_id}' and attributes.status = 'RUNNING'"
    runs = client.search_runs([tree.experiment_id], filter_string=query)
    for run in runs:
        _end_killed(client, run.info.run_id, f"{KILLED_REASON}: found running when the stage ended")
    return len(runs)


def _end_killed(client: MlflowClient, run_id: str, reason: str) -> None:
    log_tags(client, run_id, {"stagetune.state": "KILLED", "stagetune.reason": reason})
    end_run(client, run_id, "KILLED")


def study_records(study: optuna.Study, space: SearchSpace, model: ModelConfig) -> list[TrialRecord]:
    """Every trial of the stage's study as a record, in trial-number order, whichever process ran it."""
    records = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.WAITING:
            continue  # enqueued or a retry, not started: not a trial yet
        stored = trial.user_attrs.get(RECORD_ATTR)
        if stored is not None:
            records.append(TrialRecord.model_validate(stored))
            continue
        # No record: the process running it stopped before recording (killed); a retry, if any, follows.
        try:
            hp = hyperparams_from_params(trial.params, space, model)
        except ValueError:
            continue  # killed while its parameters were being chosen: it never trained (still FAIL in Optuna)
        records.append(
            TrialRecord(
                number=trial.number,
                state="FAIL" if trial.state == TrialState.FAIL else "RUNNING",
                hyperparams=hp,
                params=dict(trial.params),
                fail_reason=str(trial.user_attrs.get("fail_reason", KILLED_REASON)),
            )
        )
    return sorted(records, key=lambda r: r.number)
