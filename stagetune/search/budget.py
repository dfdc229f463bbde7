"""An exact trial budget shared by every process working on one study.

Optuna's `n_trials` counts per `optimize` call and `MaxTrialsCallback` can overshoot by about the
number of workers. Here a trial is only asked for while holding a lock that spans processes (a
PostgreSQL advisory lock, or an exclusive lock on a file next to a SQLite database), after
counting the study's trials in storage: no process can overshoot, and none stops early.
"""

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import TrialState


@contextmanager
def budget_lock(storage: str, study_name: str) -> Iterator[None]:
    """Hold the study's budget lock (PostgreSQL advisory lock, or a file lock for SQLite and others)."""
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


def claim_trial(study: optuna.Study, storage: str, n_trials: int) -> optuna.Trial | None:
    """The study's next trial if fewer than `n_trials` have started (in any process), else None.

    Enqueued (WAITING) trials are not counted: `ask` hands them out first, without creating one.
    """
    with budget_lock(storage, study.study_name):
        if len(study.get_trials(deepcopy=False, states=_STARTED)) >= n_trials:
            return None
        return study.ask()


@cache
def _engine(storage: str) -> sqlalchemy.Engine:
    return sqlalchemy.create_engine(storage, pool_size=1, max_overflow=1, pool_pre_ping=True)


def _lock_file(storage: str, study_name: str) -> Path:
    safe = hashlib.sha256(f"{storage}|{study_name}".encode()).hexdigest()[:16]
    if storage.startswith("sqlite:///"):
        folder = Path(storage.removeprefix("sqlite:///")).resolve().parent
    else:
        folder = Path.home() / ".cache" / "stagetune"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f".budget-{safe}.lock"
