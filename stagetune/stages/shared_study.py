"""A search stage's study as the meeting point of several processes.

The stage that creates a study publishes a `SharedStudyPlan` on it (space, budget, data share,
MLflow run ids); every process that runs a trial stores the trial's `TrialRecord` on it. The stage
result is then read back from the study, whoever ran each trial.
"""

from typing import TYPE_CHECKING

import optuna
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import FrozenTrial, TrialState

from schemas.pipeline import SharedStudyPlan
from schemas.results import SampleResult
from schemas.search import TrialRecord
from stagetune.errors import InputError
from stagetune.search.dead_trials import KILLED_REASON
from stagetune.search.liveness import worker_id
from stagetune.search.seeding import TrialSeededSampler
from stagetune.search.space import hyperparams_from_params
from stagetune.tracking.run_tree import TRIAL_TAG, RunTree, end_run, log_tags

if TYPE_CHECKING:
    from stagetune.stages.search_stage import SearchPlan

PLAN_ATTR = "stagetune_plan"
RECORD_ATTR = "stagetune_record"
WORKER_ID = worker_id()


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
    if isinstance(plan.study.sampler, TrialSeededSampler):
        seeding = {"sampler_seed": plan.study.sampler.seed, "n_startup_trials": plan.study.sampler.n_startup_trials}
        shared = shared.model_copy(update=seeding)
    plan.study.set_user_attr(PLAN_ATTR, shared.model_dump(mode="json"))


def read_plan(study: optuna.Study) -> SharedStudyPlan | None:
    """The plan a stage published on `study`, or None (not a stagetune study, or not yet published)."""
    data = study.user_attrs.get(PLAN_ATTR)
    return None if data is None else SharedStudyPlan.model_validate(data)


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


def study_records(plan: "SearchPlan") -> list[TrialRecord]:
    """Every trial of the stage's study as a record, in trial-number order, whichever process ran it."""
    config = plan.context.config
    records = []
    for trial in plan.study.get_trials(deepcopy=False):
        stored = trial.user_attrs.get(RECORD_ATTR)
        if stored is not None:
            records.append(TrialRecord.model_validate(stored))
            continue
        # No record: the process running it stopped before recording (killed); a retry, if any, follows.
        try:
            hp = hyperparams_from_params(trial.params, plan.space, config.model)
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
