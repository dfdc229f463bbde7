"""An Optuna journal file as a study storage: the default for one machine.

Each write appends one JSON line under a lock and fsyncs it; a process reads the lines it has not read
yet. No database engine, no connection pool: ask/tell cost a few milliseconds against tens for SQLite
(`bench/README.md`, "Profiles").

The lock is an `flock` on `<journal>.lock` rather than Optuna's lock files (`JournalFileSymlinkLock`,
`JournalFileOpenLock`): those are files that exist while the lock is held, so a process killed while
appending leaves them behind and every other process waits out their 30-s grace period, after which
they break even a live holder's lock. The kernel drops an `flock` with its process. `flock` is not
reliable on every network file system: several machines share a PostgreSQL storage instead.
"""

import fcntl
import os
import threading
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.storages.journal import JournalFileBackend

from stagetune.search.optuna_private import JournalFileLock


class FlockJournalLock(JournalFileLock):
    """An exclusive `flock` on `<journal>.lock`, across processes and across the threads of one."""

    def __init__(self, journal: str) -> None:
        self._path = f"{journal}.lock"
        self._threads = threading.Lock()  # one open file per holder: flock is per open file, not per thread
        self._handle: IO[bytes] | None = None

    def acquire(self) -> bool:
        self._threads.acquire()
        try:
            handle = open(self._path, "ab")  # noqa: SIM115 - held until release()
            fcntl.flock(handle, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise
        self._handle = handle
        return True

    def release(self) -> None:
        handle, self._handle = self._handle, None
        try:
            if handle is not None:
                handle.close()  # closing the file drops its flock
        finally:
            self._threads.release()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self._path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._path = state["path"]
        self._threads = threading.Lock()
        self._handle = None


def journal_storage(path: Path) -> optuna.storages.JournalStorage:
    """The journal at `path` (created empty, with its folder, when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    file = os.fspath(path)
    return optuna.storages.JournalStorage(JournalFileBackend(file, lock_obj=FlockJournalLock(file)))
