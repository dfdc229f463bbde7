"""The Optuna journal file as the default storage: chosen when nothing is configured (an earlier version's
optuna.db keeps its runs resumable), shared by processes of one machine under an flock that dies with its
holder, named explicitly as journal:///path, and refused with exit 2 when the name is wrong."""

import fcntl
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from schemas.urls import default_storage_url, journal_path, storage_url_problem
from stagetune.search.budget import claim_trial, release_trial, used_budget
from stagetune.search.journal_file import FlockJournalLock
from stagetune.search.liveness import BOOT_ATTR, STARTED_ATTR, WORKER_ATTR, boot_id, owner_is_dead, process_started
from stagetune.search.optuna_private import study_storage
from stagetune.search.study import open_storage, open_study, storage_url
from tests.conftest import tiny_config
from tests.test_bad_input import assert_rejected, run_case

BUDGET = 24


def test_the_default_storage_is_a_journal_file_in_the_workdir(tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "work")
    url = storage_url(config)
    journal = (tmp_path / "work").resolve() / "optuna.journal"
    assert url == f"journal:///{journal}"
    study = open_study("s", url, "maximize", optuna.samplers.RandomSampler(seed=0), optuna.pruners.NopPruner())
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    study.tell(trial, 0.5)
    assert isinstance(study_storage(study), optuna.storages.JournalStorage)
    assert journal.stat().st_size > 0
    assert not (tmp_path / "work" / "optuna.db").exists()
    again = optuna.load_study(study_name="s", storage=open_storage(url))
    assert [(t.state, t.value) for t in again.trials] == [(TrialState.COMPLETE, 0.5)]


def test_a_workdir_with_an_earlier_optuna_db_keeps_resuming_from_it(tmp_path: Path) -> None:
    database = tmp_path / "optuna.db"
    earlier = optuna.create_study(study_name="old-coarse", storage=f"sqlite:///{database}")
    earlier.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))
    url = storage_url(tiny_config(tmp_path))
    assert url == f"sqlite:///{database.resolve()}"
    assert default_storage_url(tmp_path) == f"sqlite:///{database.absolute()}"
    assert len(optuna.load_study(study_name="old-coarse", storage=open_storage(url)).trials) == 1
    assert not (tmp_path / "optuna.journal").exists()


def test_an_explicit_sqlite_storage_is_kept(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'mine.db'}"
    assert storage_url(tiny_config(tmp_path / "work", f"search.storage={url}")) == url
    assert isinstance(open_storage(url), optuna.storages.RDBStorage)
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    study.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=2)
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 2  # a plain Optuna URL still
    assert not (tmp_path / "work" / "optuna.journal").exists()


def test_an_explicit_journal_is_opened_where_it_is_named(tmp_path: Path) -> None:
    url = f"journal:///{tmp_path / 'sub' / 'studies.log'}"
    assert storage_url_problem(url) is None
    assert journal_path(url) == tmp_path / "sub" / "studies.log"
    optuna.create_study(study_name="s", storage=open_storage(url))
    assert (tmp_path / "sub" / "studies.log").is_file()
    assert open_storage(url) is open_storage(url)  # read once per process, then only its new lines


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("journal://studies.journal", "three slashes"),
        ("journal:///", "three slashes"),
        ("journal:///tmp/studies/", "folder"),
    ],
)
def test_a_malformed_journal_url_is_refused_with_exit_2(tmp_path: Path, url: str, says: str) -> None:
    problem = storage_url_problem(url)
    assert problem is not None
    assert says in problem
    assert "journal:///path/optuna.journal" in problem
    result, workdir = run_case(tmp_path, {"search.storage": url})
    assert_rejected(result, workdir, "search.storage")


def test_a_journal_path_that_is_a_folder_is_refused_with_exit_2(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    result, workdir = run_case(tmp_path, {"search.storage": f"journal:///{folder}"})
    assert_rejected(result, workdir, "search.storage")
    assert "not a journal file" in result.output


def _claim_all(url: str, heartbeat: int, start: "threading.Barrier") -> None:
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    start.wait()  # every process has its storage open: they claim side by side
    while (trial := claim_trial(study, url, BUDGET, heartbeat)) is not None:
        time.sleep(0.02)  # a trial's work, outside the budget lock, so the others get their turn
        study.tell(trial, trial.suggest_float("x", 0.0, 1.0))
        release_trial(trial, url, heartbeat)


def test_processes_share_one_journal_study_with_an_exact_budget(tmp_path: Path) -> None:
    url = f"journal:///{tmp_path / 'o.journal'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(3)
    workers = [context.Process(target=_claim_all, args=(url, 1, start)) for _ in range(2)]
    for worker in workers:
        worker.start()
    _claim_all(url, 1, start)
    for worker in workers:
        worker.join()
        assert worker.exitcode == 0
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(BUDGET))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert used_budget(trials) == BUDGET
    assert len({t.user_attrs[WORKER_ATTR] for t in trials}) == 3  # each process ran trials


def test_the_journal_lock_dies_with_a_killed_holder(tmp_path: Path) -> None:
    journal = tmp_path / "o.journal"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from stagetune.search.journal_file import FlockJournalLock\n"
            "lock = FlockJournalLock(sys.argv[1])\n"
            "lock.acquire()\n"
            "print('held', flush=True)\n"
            "time.sleep(600)\n",
            str(journal),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "held\n"
    with open(f"{journal}.lock", "ab") as probe:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by the live process
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free at once: no grace period to wait out
    lock = FlockJournalLock(str(journal))
    assert lock.acquire()
    lock.release()


def test_a_reused_process_id_does_not_keep_a_dead_trial_alive(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="s", storage=open_storage(f"journal:///{tmp_path / 'o.journal'}"))
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        started = process_started(sleeper.pid)
        assert started is not None
        for recorded, dead in ((started, False), (str(int(started) + 1), True)):
            trial = study.ask()
            trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}-{sleeper.pid}")
            trial.set_user_attr(BOOT_ATTR, boot_id())
            trial.set_user_attr(STARTED_ATTR, recorded)
            frozen = study.get_trials()[trial.number]
            assert owner_is_dead(frozen, set(), 60) is dead  # another start time: another process, same id
    finally:
        sleeper.kill()
        sleeper.wait()


def test_per_epoch_values_skip_the_fsync_and_a_killed_reporter_keeps_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Trial.report` lines are appended without an fsync, every other line with one; the values reach the
    journal all the same, for this process, for another storage object on the file, and after the
    reporting process is killed."""
    journal = tmp_path / "o.journal"
    url = f"journal:///{journal}"
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    trial = study.ask()
    after_ask = len(synced)
    assert after_ask > 0
    for epoch in range(3):
        trial.report(1.0 / (epoch + 1), epoch)
        trial.should_prune()
    assert len(synced) == after_ask
    study.tell(trial, 0.25)
    assert len(synced) > after_ask

    reporter = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal, sys, optuna\n"
            "from stagetune.search.study import open_storage\n"
            "study = optuna.load_study(study_name='s', storage=open_storage(sys.argv[1]))\n"
            "trial = study.ask()\n"
            "for epoch in range(4):\n"
            "    trial.report(float(epoch), epoch)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n",
            url,
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        check=False,
    )
    assert reporter.returncode == -signal.SIGKILL
    fresh = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    first, killed = optuna.load_study(study_name="s", storage=fresh).get_trials()
    assert first.intermediate_values == {0: 1.0, 1: 0.5, 2: 1.0 / 3}
    assert first.value == 0.25
    assert killed.intermediate_values == {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0}
