"""The Optuna API stagetune relies on beyond the documented surface: each piece exists and behaves.

`stagetune.search.optuna_private` holds every private use; the search also relies on a few
conventions of Optuna's public retry machinery. An Optuna upgrade that changes any of them fails
here, with the name of what changed, instead of in a search.
"""

import ast
import inspect
import re
import time
from pathlib import Path

import optuna
import pytest
from optuna.samplers import GPSampler, TPESampler
from optuna.search_space import IntersectionSearchSpace
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from stagetune.search import optuna_private
from stagetune.search.budget import RETRY_HISTORY
from stagetune.search.dead_trials import FAILED_TRIAL, RetryDeadTrial, enqueue_retry, fail_dead_trials
from stagetune.search.journal_file import FlockJournalLock
from stagetune.search.liveness import Liveness
from stagetune.search.study import open_storage

REPO = Path(__file__).resolve().parents[1]
# Optuna marks the retry readers and `fail_stale_trials` experimental: the point here is that they still work.
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
PRIVATE_ATTRIBUTES = {
    "_storage",
    "_trial_id",
    "_study_id",
    "_get_trials",
    "_get_stale_trial_ids",
    "_cached_frozen_trial",
    "_pruners",
    "_try_initialization",
    "_get_bracket_id",
    "_create_bracket_study",
}


def _study(tmp_path: Path, liveness: Liveness | None = None) -> tuple[optuna.Study, str]:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    return optuna.create_study(study_name="s", storage=open_storage(url, liveness)), url


def test_trial_id_is_the_storage_s_id_of_the_trial(tmp_path: Path) -> None:
    study, _ = _study(tmp_path)
    first, second = study.ask(), study.ask()
    storage = optuna_private.study_storage(study)
    assert isinstance(storage, BaseStorage)
    study_id = storage.get_study_id_from_name("s")
    for trial in (first, second):
        assert isinstance(optuna_private.trial_id(trial), int)
        assert optuna_private.trial_id(trial) == storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    frozen = study.get_trials(deepcopy=False)[1]
    assert optuna_private.trial_id(frozen) == optuna_private.trial_id(second)


def test_the_study_s_storage_records_heartbeats_when_the_rdb_storage_has_an_interval(tmp_path: Path) -> None:
    study, _ = _study(tmp_path, Liveness(heartbeat_seconds=1, stale_after_seconds=2, max_retries=1))
    storage = optuna_private.heartbeat_storage(optuna_private.study_storage(study))
    assert storage is not None, "the RDB storage (in Optuna's cache) no longer counts as a heartbeat storage"
    assert isinstance(storage, optuna_private.HeartbeatStorage)
    assert storage.get_heartbeat_interval() == 1
    trial = study.ask()
    storage.record_heartbeat(optuna_private.trial_id(trial))  # raises if the method or its signature changed
    assert optuna_private.heartbeat_storage(optuna.storages.InMemoryStorage()) is None


def test_a_journal_takes_stagetune_s_lock_and_keeps_no_heartbeats(tmp_path: Path) -> None:
    """The journal backend calls `acquire`/`release` of the lock it is given around each append; and its
    storage records no heartbeats (if an upgrade adds them, `stagetune.search.liveness` could use them)."""
    assert set(inspect.signature(optuna.storages.journal.JournalFileBackend).parameters) >= {"file_path", "lock_obj"}
    calls: list[str] = []

    class CountingLock(FlockJournalLock):
        def acquire(self) -> bool:
            calls.append("acquire")
            return super().acquire()

        def release(self) -> None:
            calls.append("release")
            super().release()

    assert issubclass(FlockJournalLock, optuna_private.JournalFileLock)
    file = str(tmp_path / "o.journal")
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(file, lock_obj=CountingLock(file))
    )
    optuna.create_study(study_name="s", storage=storage).ask()
    assert calls
    assert calls == ["acquire", "release"] * (len(calls) // 2)
    assert optuna_private.heartbeat_storage(storage) is None
    assert optuna_private.heartbeat_storage(open_storage(f"journal:///{file}")) is None


def test_only_the_journal_lines_of_trial_report_count_as_intermediate_values(tmp_path: Path) -> None:
    """`stagetune.search.journal_file` skips the fsync for exactly the lines `Trial.report` writes."""
    appended: list[list[dict[str, object]]] = []

    class Recording(optuna.storages.journal.JournalFileBackend):
        def append_logs(self, logs: list[dict[str, object]]) -> None:
            appended.append(logs)
            super().append_logs(logs)

    storage = optuna.storages.JournalStorage(Recording(str(tmp_path / "o.journal")))
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.set_user_attr("owner", "me")
    before = len(appended)
    trial.report(0.5, 0)
    assert len(appended) == before + 1, "Trial.report no longer writes one append of its own"
    assert [optuna_private.is_intermediate_value(log) for log in appended[-1]] == [True]
    study.tell(trial, 0.5)
    others = appended[:before] + appended[before + 1 :]
    assert not any(optuna_private.is_intermediate_value(log) for logs in others for log in logs)


def test_running_trial_rebuilds_a_live_trial_that_reports_and_prunes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    pruner = optuna.pruners.ThresholdPruner(upper=1.0)
    study = optuna.create_study(study_name="s", storage=open_storage(url), pruner=pruner)
    asked = study.ask()
    other = optuna.load_study(study_name="s", storage=open_storage(url), pruner=pruner)  # another process's view
    trial = optuna_private.running_trial(other, asked.number)
    assert isinstance(trial, optuna.Trial)
    assert trial.number == asked.number
    trial.report(0.5, 0)
    assert not trial.should_prune()
    trial.report(2.0, 1)
    assert trial.should_prune()
    assert study.get_trials(deepcopy=False)[0].intermediate_values == {0: 0.5, 1: 2.0}
    assert list(inspect.signature(optuna.Trial.__init__).parameters) == ["self", "study", "trial_id"]


def test_fail_stale_trials_hands_each_stale_trial_to_the_storage_s_callback(tmp_path: Path) -> None:
    liveness = Liveness(heartbeat_seconds=1, stale_after_seconds=1, max_retries=2)
    study, _ = _study(tmp_path, liveness)
    storage = optuna_private.heartbeat_storage(optuna_private.study_storage(study))
    assert storage is not None
    assert storage.get_heartbeat_stale_trial_callback() == RetryDeadTrial(liveness.max_retries)
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    storage.record_heartbeat(optuna_private.trial_id(trial))
    time.sleep(2.5)  # the heartbeat grows older than the grace period (1 s)
    optuna.storages.fail_stale_trials(study)
    failed, retry = study.get_trials(deepcopy=False)
    assert failed.state == TrialState.FAIL
    assert retry.state == TrialState.WAITING
    assert retry.params == failed.params


def test_a_retry_keeps_optuna_s_retry_conventions_and_its_parameters(tmp_path: Path) -> None:
    study, _ = _study(tmp_path)
    trial = study.ask()
    x = trial.suggest_float("x", 0.0, 1.0)
    study.tell(trial, state=TrialState.FAIL)
    [failed] = study.get_trials(deepcopy=False)
    assert enqueue_retry(study, failed, max_retries=1)
    retry = study.get_trials(deepcopy=False)[1]
    # Optuna's own readers of a retry series find ours.
    assert set(retry.system_attrs) == {RETRY_HISTORY, FAILED_TRIAL}
    assert RetryHeartbeatStaleTrialCallback.retry_history(retry) == [failed.number]
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == failed.number
    again = study.ask()  # a WAITING trial with parameters is asked with them, without sampling
    assert again.number == retry.number
    assert again.suggest_float("x", 0.0, 1.0) == x


def test_a_local_dead_trial_is_failed_through_study_tell(tmp_path: Path) -> None:
    """The same-machine path fails a trial of a gone process with `study.tell(number, state=FAIL)`."""
    study, url = _study(tmp_path)
    trial = study.ask()  # no owner recorded, started "long" ago for a grace period of 0 s
    trial.suggest_float("x", 0.0, 1.0)
    time.sleep(0.1)
    [failed] = fail_dead_trials(study, url, Liveness(heartbeat_seconds=1, stale_after_seconds=0, max_retries=1))
    assert isinstance(failed, FrozenTrial)
    assert failed.state == TrialState.FAIL
    with pytest.raises(
        ValueError, match="Cannot tell a FAIL trial"
    ):  # telling a finished trial again is refused (what the loop relies on)
        study.tell(trial.number, state=TrialState.FAIL)


def test_samplers_read_trials_through_the_private_get_trials_the_view_filters() -> None:
    """The sync window's view (`study_view`) filters `Study._get_trials`: it must keep its signature, and
    TPE, GP and the intersection search space must still read trials through it (not the storage)."""
    assert list(inspect.signature(optuna.Study._get_trials).parameters) == ["self", "deepcopy", "states", "use_cache"]
    assert list(inspect.signature(optuna.Study.get_trials).parameters) == ["self", "deepcopy", "states"]
    for reader in (TPESampler._sample_relative, TPESampler.sample_independent, TPESampler._sample):
        assert "study._get_trials(" in inspect.getsource(reader), f"{reader.__qualname__} reads trials elsewhere"
    assert "study._get_trials(" in inspect.getsource(GPSampler.sample_relative)
    assert "study._get_trials(" in inspect.getsource(IntersectionSearchSpace.calculate)
    assert "study._storage" not in inspect.getsource(TPESampler._sample)  # no read past the view
    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    view = optuna_private.study_view(study, 2)
    assert [t.number for t in view._get_trials(deepcopy=False, use_cache=False)] == [0, 1]
    assert [t.number for t in view.get_trials(deepcopy=False)] == [0, 1]


def test_hyperband_s_brackets_are_reached_as_prune_in_bracket_reaches_them() -> None:
    """`prune_in_bracket` replaces `HyperbandPruner.prune` (whose bracket study reads the storage past a view)
    with its own pieces: the bracket pruners, their lazy initialisation and the bracket of a trial."""
    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3)
    assert pruner._pruners == []
    study = optuna.create_study(study_name="hb", pruner=pruner)
    trial = study.ask()
    trial.report(1.0, 0)
    frozen = study.get_trials(deepcopy=False)[0]
    assert not optuna_private.prune_in_bracket(pruner, optuna_private.study_view(study, 0), frozen)
    assert len(pruner._pruners) == 3  # floor(log3(9 / 1)) + 1 brackets, built on first use
    assert all(isinstance(p, optuna.pruners.SuccessiveHalvingPruner) for p in pruner._pruners)
    assert pruner._get_bracket_id(study, frozen) in range(3)
    hyperband_source = inspect.getsource(optuna.pruners.HyperbandPruner.prune)
    # Optuna's own prune still goes through the bracket study this module steps around.
    assert "_create_bracket_study" in hyperband_source
    assert "_get_bracket_id" in hyperband_source


def test_no_other_module_uses_optuna_s_private_api() -> None:
    offenders = []
    for folder in ("stagetune", "flows", "tasks", "schemas"):
        for path in (REPO / folder).rglob("*.py"):
            if path.name == "optuna_private.py":
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                private_import = isinstance(node, ast.ImportFrom) and re.match(r"optuna(\.\w+)*\._", node.module or "")
                private_attribute = (
                    isinstance(node, ast.Attribute)
                    and node.attr in PRIVATE_ATTRIBUTES
                    and not (isinstance(node.value, ast.Name) and node.value.id == "self")
                )
                if private_import or private_attribute:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"private Optuna API outside stagetune/search/optuna_private.py: {offenders}"
