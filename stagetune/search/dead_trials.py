"""Trials whose process died: marked FAIL (never left RUNNING) and retried with the same parameters.

Two ways to find them. On an RDB storage, Optuna's heartbeat (`heartbeat_interval` and `grace_period`):
its public `optuna.storages.fail_stale_trials` fails every trial whose last heartbeat is older than the
grace period and hands each to the storage's `heartbeat_stale_trial_callback`, `RetryDeadTrial` (set by
`stagetune.search.study.open_storage`); on a journal, which keeps no heartbeats in Optuna 5.0, it does
nothing. And, on every storage and without waiting out a grace period, a trial started by a process of
this machine that no longer exists (`stagetune.search.liveness.owner_is_dead`), failed through `study.tell`.

Optuna's own `RetryHeartbeatStaleTrialCallback` is not the callback: it copies the failed trial's
user attributes into the retry (this pipeline's trial record and owner among them, so the retry
would read as the trial it replaces), and it cannot report which trials it failed, whose MLflow runs
must be ended. The retry keeps its history under the same system attributes as Optuna's
(`retry_history`, `failed_trial`), so `RetryHeartbeatStaleTrialCallback.retry_history` reads it.
"""

import logging
import threading
import warnings
from dataclasses import dataclass

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from stagetune.search.budget import RETRY_HISTORY, budget_lock
from stagetune.search.liveness import Liveness, beating_trials, owner_is_dead

LOGGER = logging.getLogger(__name__)
KILLED_REASON = "killed: its process stopped before the trial ended"
FAILED_TRIAL = "failed_trial"  # Optuna's key for the first trial of a retry series
_failing = threading.local()  # the trials `fail_dead_trials` fails in this thread, as they are failed


@dataclass(frozen=True)
class RetryDeadTrial:
    """Enqueue a dead process's FAIL trial again with its parameters, at most `max_retries` times."""

    max_retries: int

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        retried = enqueue_retry(study, trial, self.max_retries)
        LOGGER.warning(
            "trial %s of %s was left RUNNING by a stopped process: marked FAIL%s",
            trial.number,
            study.study_name,
            "" if retried else " (no retries left)",
        )
        failed = getattr(_failing, "trials", None)
        if failed is not None:
            failed.append(trial)


def fail_dead_trials(study: optuna.Study, storage: str, liveness: Liveness) -> list[FrozenTrial]:
    """Mark every RUNNING trial of a dead process FAIL and enqueue its retry; return the failed trials.

    Runs under the study's budget lock, so no process counts the budget between a trial's failure and
    the creation of its retry. A trial is retried at most `liveness.max_retries` times (then it stays
    a FAIL that uses up its share of the budget).
    """
    with budget_lock(storage, study.study_name):
        failed: list[FrozenTrial] = []
        _failing.trials = failed
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # Heartbeat too old: retried by the storage's callback (an RDB storage; a journal has none).
                optuna.storages.fail_stale_trials(study)
            beating = beating_trials()
            retry = RetryDeadTrial(liveness.max_retries)
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if owner_is_dead(trial, beating, liveness.stale_after_seconds):
                    try:
                        failed_trial = study.tell(trial.number, state=TrialState.FAIL)  # a copy, as failed
                    except (ValueError, UpdateFinishedTrialError):  # finished meanwhile (told by another process)
                        continue
                    retry(study, failed_trial)
        finally:
            del _failing.trials
        return sorted(failed, key=lambda trial: trial.number)


def enqueue_retry(study: optuna.Study, trial: FrozenTrial, max_retries: int) -> bool:
    """Put a FAIL trial's parameters back as a WAITING retry, unless it ran out of retries (then False).
    Call it under the study's budget lock, with the failure, so no process counts the budget in between.

    The retry carries the parameters and their distributions (as Optuna's retry callback does), so
    the trial that asks it gets them back without sampling."""
    history = [*trial.system_attrs.get(RETRY_HISTORY, []), trial.number]
    if len(history) > max_retries:
        return False
    retry = optuna.trial.create_trial(
        state=TrialState.WAITING,
        params=dict(trial.params),
        distributions=dict(trial.distributions),
        system_attrs={RETRY_HISTORY: history, FAILED_TRIAL: history[0]},
        user_attrs={"retry_of": trial.number},
    )
    study.add_trial(retry)
    return True
