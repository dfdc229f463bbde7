"""An exact trial budget shared by every process working on one study.

Optuna's `n_trials` counts per `optimize` call and `MaxTrialsCallback` can overshoot by about the
number of workers. Here a trial is only asked for while holding a lock that spans processes (a
PostgreSQL advisory lock, or an exclusive lock on a file next to a journal or SQLite file), after
counting the study's trials in storage: no process can overshoot, and none stops early.
"""

import fcntl
import hashlib
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from schemas.urls import journal_path
from stagetune.search.liveness import keeper_for, mark_owner
from stagetune.search.optuna_private import trial_id
from stagetune.search.sync_window import unfinished_before


@contextmanager
def budget_lock(storage: str, study_name: str) -> Iterator[None]:
    """Hold the study's budget lock (PostgreSQL advisory lock, or a file lock for a journal, SQLite and others)."""
    if storage.startswith("postgresql"):
        key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
        with _engine(storage).connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        return
    with _lock_file(storage, study_name).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_STARTED = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
RETRY_HISTORY = "retry_history"


def used_budget(trials: Sequence[FrozenTrial]) -> int:
    """Trials that count against the budget: every started trial except those whose process died and
    that were retried (a retry carries the numbers it replaces in its `retry_history`)."""
    replaced = {number for trial in trials for number in trial.system_attrs.get(RETRY_HISTORY, [])}
    return sum(trial.state in _STARTED and trial.number not in replaced for trial in trials)


@dataclass(frozen=True)
class Blocked:
    """The next trial may not be asked yet: the trials of its sync window's past are still running."""

    waiting_for: list[int]


def claim_trial(
    study: optuna.Study,
    storage: str,
    n_trials: int,
    heartbeat_seconds: float | None = None,
    sync_window: int | None = None,
) -> optuna.Trial | Blocked | None:
    """The study's next trial if fewer than `n_trials` have started (in any process), else None.

    With `sync_window`, `Blocked` while a trial numbered below the next trial's cutoff has not finished
    (`stagetune.search.sync_window`): decided under the lock, where every process numbers its trials,
    so the wait holds across workers too. The caller waits without the lock and asks again.

    Enqueued and retried (WAITING) trials are not counted: `ask` hands them out first, without
    creating one. With `heartbeat_seconds`, this process records the trial's first heartbeat and
    keeps it alive until `release_trial`, all before the lock is let go: a trial is never RUNNING
    without an owner that can be found dead.
    """
    with budget_lock(storage, study.study_name):
        trials = study.get_trials(deepcopy=False)
        if used_budget(trials) >= n_trials:
            return None
        if sync_window is not None:
            unfinished = unfinished_before(trials, sync_window)
            if unfinished:
                return Blocked(unfinished)
        with warnings.catch_warnings():
            # "Heartbeat of storage is supposed to be used with Study.optimize": here the heartbeat
            # is recorded by this process's keeper instead.
            warnings.simplefilter("ignore", UserWarning)
            trial = study.ask()
        if heartbeat_seconds is not None:
            keeper_for(storage, study, heartbeat_seconds).add(trial_id(trial))
            mark_owner(trial)
        return trial


def release_trial(trial: optuna.Trial, storage: str, heartbeat_seconds: float | None) -> None:
    """Stop the heartbeat of a trial this process has told."""
    if heartbeat_seconds is not None:
        keeper_for(storage, trial.study, heartbeat_seconds).discard(trial_id(trial))


@cache
def _engine(storage: str) -> sqlalchemy.Engine:
    return sqlalchemy.create_engine(storage, pool_size=1, max_overflow=1, pool_pre_ping=True)


def _lock_file(storage: str, study_name: str) -> Path:
    safe = hashlib.sha256(f"{storage}|{study_name}".encode()).hexdigest()[:16]
    journal = journal_path(storage)
    if journal is not None:
        folder = journal.resolve().parent
    elif storage.startswith("sqlite:///"):
        folder = Path(storage.removeprefix("sqlite:///")).resolve().parent
    else:
        folder = Path.home() / ".cache" / "stagetune"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f".budget-{safe}.lock"
