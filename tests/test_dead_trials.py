"""Trials of dead processes: found (heartbeat, or a local process that is gone), failed, retried once
per allowed retry, and not counted twice against the budget; on SQLite and on the journal (no heartbeat)."""

import multiprocessing
import os
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from stagetune.search.budget import claim_trial, release_trial, used_budget
from stagetune.search.dead_trials import fail_dead_trials
from stagetune.search.liveness import Liveness, keeper_for
from stagetune.search.optuna_private import trial_id
from stagetune.search.study import open_storage

FAST = Liveness(heartbeat_seconds=1, stale_after_seconds=2, max_retries=1)


STORAGES = {"sqlite": "sqlite:///{}/o.db", "journal": "journal:///{}/o.journal"}


def _study(tmp_path: Path, kind: str = "sqlite") -> tuple[optuna.Study, str]:
    url = STORAGES[kind].format(tmp_path)
    return optuna.create_study(study_name="s", storage=open_storage(url, FAST)), url


def _claim_and_die(url: str) -> None:
    study = optuna.load_study(study_name="s", storage=open_storage(url, FAST))
    trial = claim_trial(study, url, 10, FAST.heartbeat_seconds)
    assert trial is not None
    trial.suggest_float("x", 0.0, 1.0)
    os._exit(0)  # dies without telling the trial (no cleanup, like SIGKILL)


def _die_with_a_running_trial(url: str) -> None:
    process = multiprocessing.get_context("spawn").Process(target=_claim_and_die, args=(url,))
    process.start()
    process.join()


@pytest.mark.parametrize("kind", STORAGES)
def test_a_dead_local_process_s_trial_is_failed_at_once_and_retried_with_its_params(tmp_path: Path, kind: str) -> None:
    study, url = _study(tmp_path, kind)
    _die_with_a_running_trial(url)
    [orphan] = study.get_trials(states=(TrialState.RUNNING,))
    failed = fail_dead_trials(study, url, FAST)  # no grace period to wait out: the PID is gone
    assert [t.number for t in failed] == [orphan.number]
    [retry] = study.get_trials(states=(TrialState.WAITING,))
    assert retry.params == orphan.params
    assert RetryHeartbeatStaleTrialCallback.retry_history(retry) == [orphan.number]  # Optuna reads the history
    assert retry.user_attrs["retry_of"] == orphan.number
    trial = claim_trial(study, url, 10, FAST.heartbeat_seconds)
    assert trial is not None
    assert trial.suggest_float("x", 0.0, 1.0) == orphan.params["x"]


@pytest.mark.parametrize("kind", STORAGES)
def test_the_budget_counts_a_replaced_trial_once(tmp_path: Path, kind: str) -> None:
    study, url = _study(tmp_path, kind)
    _die_with_a_running_trial(url)
    fail_dead_trials(study, url, FAST)
    numbers = []
    while (trial := claim_trial(study, url, 3, FAST.heartbeat_seconds)) is not None:
        trial.suggest_float("x", 0.0, 1.0)
        study.tell(trial, 1.0)
        release_trial(trial, url, FAST.heartbeat_seconds)
        numbers.append(trial.number)
    trials = study.get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    assert used_budget(trials) == 3
    assert numbers == [1, 2, 3]  # the retry (1) first, then new trials


@pytest.mark.parametrize("kind", STORAGES)
def test_retries_stop_at_max_retries_and_the_failure_then_uses_budget(tmp_path: Path, kind: str) -> None:
    study, url = _study(tmp_path, kind)
    _die_with_a_running_trial(url)
    fail_dead_trials(study, url, FAST)
    _die_with_a_running_trial(url)  # the retry dies too
    failed = fail_dead_trials(study, url, FAST)
    assert len(failed) == 1
    assert not study.get_trials(states=(TrialState.WAITING,))  # max_retries=1: no second retry
    assert used_budget(study.get_trials()) == 1


def test_another_machine_s_trial_is_failed_only_once_its_heartbeat_is_stale(tmp_path: Path) -> None:
    study, url = _study(tmp_path)
    beating = claim_trial(study, url, 10, FAST.heartbeat_seconds)
    assert beating is not None
    silent = claim_trial(study, url, 10, FAST.heartbeat_seconds)
    assert silent is not None
    for trial in (beating, silent):  # as if run by processes of another machine: only heartbeats tell
        trial.set_user_attr("worker", "elsewhere-1")
    keeper_for(url, study, FAST.heartbeat_seconds).discard(trial_id(silent))  # its process hangs
    assert not fail_dead_trials(study, url, FAST)  # within the grace period
    time.sleep(FAST.stale_after_seconds + 1.5)
    failed = fail_dead_trials(study, url, FAST)
    assert [t.number for t in failed] == [silent.number]
    assert study.get_trials(states=(TrialState.RUNNING,))[0].number == beating.number
    release_trial(beating, url, FAST.heartbeat_seconds)
