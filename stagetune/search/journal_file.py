"""An Optuna journal file as a study storage: the default for one machine.

Each write appends one JSON line under a lock and fsyncs it; a process reads the lines it has not read
yet. No database engine, no connection pool: ask/tell cost a few milliseconds against tens for SQLite
(`bench/README.md`, "Profiles").

Per-epoch values (`Trial.report`) are appended without the fsync. They matter only while their trial
runs: a killed process loses nothing that reached the page cache, the trial's next fsynced line (its
`tell`) flushes them to disk with it, and a machine that loses power loses at most the running trials'
latest values, and those trials are retried anyway. The fsync was the largest per-epoch cost beside a
tracking store's own disk commits (`bench/README.md`, "Per-epoch values without fsync").

The lock is an `flock` on `<journal>.lock` rather than Optuna's lock files (`JournalFileSymlinkLock`,
`JournalFileOpenLock`): those are files that exist while the lock is held, so a process killed while
appending leaves them behind and every other process waits out their 30-s grace period, after which
they break even a live holder's lock. The kernel drops an `flock` with its process. `flock` is not
reliable on every network file system: several machines share a PostgreSQL storage instead.
"""

import fcntl
import json
import os
import threading
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.storages.journal import JournalFileBackend

from stagetune.search.optuna_private import JournalFileLock, is_intermediate_value


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


class JournalFile(JournalFileBackend):
    """Optuna's journal file under an `FlockJournalLock`, appending per-epoch values without an fsync."""

    def __init__(self, file: str) -> None:
        self.file, self.lock = file, FlockJournalLock(file)
        super().__init__(file, lock_obj=self.lock)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        if not logs or not all(is_intermediate_value(log) for log in logs):
            super().append_logs(logs)
            return
        # The same line format as Optuna's `append_logs` (it reads them back with `read_logs`).
        lines = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
        self.lock.acquire()
        try:
            with open(self.file, "ab") as handle:
                handle.write(lines)
        finally:
            self.lock.release()


def journal_storage(path: Path) -> optuna.storages.JournalStorage:
    """The journal at `path` (created empty, with its folder, when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFile(os.fspath(path)))
