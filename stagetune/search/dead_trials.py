"""Trials whose process died: marked FAIL (never left RUNNING) and retried with the same parameters."""

import logging
import warnings

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from stagetune.search.budget import RETRY_HISTORY, budget_lock
from stagetune.search.liveness import Liveness, beating_trials, owner_is_dead

LOGGER = logging.getLogger(__name__)
KILLED_REASON = "killed: its process stopped before the trial ended"


def fail_dead_trials(study: optuna.Study, storage: str, liveness: Liveness) -> list[FrozenTrial]:
    """Mark every RUNNING trial of a dead process FAIL and enqueue its retry; return the failed trials.

    Runs under the study's budget lock, so no process counts the budget between a trial's failure and
    the creation of its retry. A trial is retried at most `liveness.max_retries` times (then it stays
    a FAIL that uses up its share of the budget).
    """
    with budget_lock(storage, study.study_name):
        dead = _dead_trial_ids(study, liveness)
        failed = []
        for trial_id in sorted(dead):
            try:
                if not study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                    continue
            except UpdateFinishedTrialError:  # finished meanwhile (another process told or failed it)
                continue
            trial = study._storage.get_trial(trial_id)
            failed.append(trial)
            retried = enqueue_retry(study, trial, liveness.max_retries)
            LOGGER.warning(
                "trial %s of %s was left RUNNING by a stopped process: marked FAIL%s",
                trial.number,
                study.study_name,
                "" if retried else " (no retries left)",
            )
        return failed


def _dead_trial_ids(study: optuna.Study, liveness: Liveness) -> set[int]:
    dead: set[int] = set()
    storage = study._storage
    if isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            dead.update(storage._get_stale_trial_ids(study._study_id))
    beating = beating_trials()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if owner_is_dead(trial, beating, liveness.stale_after_seconds):
            dead.add(trial._trial_id)
    return dead


def enqueue_retry(study: optuna.Study, trial: FrozenTrial, max_retries: int) -> bool:
    """Put a FAIL trial's parameters back as a WAITING retry, unless it ran out of retries (then False).
    Call it under the study's budget lock, with the failure, so no process counts the budget in between."""
    history = [*trial.system_attrs.get(RETRY_HISTORY, []), trial.number]
    if len(history) > max_retries:
        return False
    retry = optuna.trial.create_trial(
        state=TrialState.WAITING,
        system_attrs={"fixed_params": dict(trial.params), RETRY_HISTORY: history, "failed_trial": history[0]},
        user_attrs={"retry_of": trial.number},
    )
    study.add_trial(retry)
    return True
