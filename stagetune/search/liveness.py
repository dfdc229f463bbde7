"""Which process runs a trial, and whether that process is still alive.

Every process that runs trials keeps the set of trials it runs (`HeartbeatKeeper`, one per process and
storage). A RUNNING trial is taken for dead at once when it was started by a process of this machine
(same host, same boot) that no longer exists, or whose process id now belongs to a process started
later: a restarted pipeline does not wait out a grace period for the trials its killed predecessor left.

On an RDB storage (SQLite, PostgreSQL) the keeper also records a heartbeat for each of its trials (one
daemon thread), and a trial whose heartbeat is older than `stale_after_seconds` is taken for dead too
(Optuna's heartbeat rule): the only signal for a trial run by another machine. Optuna 5.0's journal
storage keeps no heartbeats; a journal file serves one machine, where the process check finds every
dead trial's process (and neither signal can tell a hung process from a slow one).
"""

import datetime as dt
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from stagetune.search.optuna_private import HeartbeatStorage, heartbeat_storage, study_storage, trial_id

LOGGER = logging.getLogger(__name__)
WORKER_ATTR = "worker"
BOOT_ATTR = "worker_boot"
STARTED_ATTR = "worker_started"  # the process's start time (clock ticks after boot): a reused process id differs


@dataclass(frozen=True)
class Liveness:
    """The heartbeat settings of a study (`search.heartbeat_seconds`, `stale_after_seconds`, `max_retries`)."""

    heartbeat_seconds: int = 10
    stale_after_seconds: int = 60
    max_retries: int = 2


def worker_id() -> str:
    """`<host>-<pid>` of this process: shown in the study and MLflow, and used to recognise dead processes."""
    return f"{socket.gethostname()}-{os.getpid()}"


@cache
def boot_id() -> str:
    """This machine's boot id (two machines may share a host name; a PID is only unique within one boot)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return "unknown"


def process_started(pid: int) -> str | None:
    """When process `pid` started, in clock ticks after boot (`/proc/<pid>/stat`); None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces and ')'
    return fields[19] if len(fields) > 19 else None  # field 22 of proc(5); the list starts at field 3


def mark_owner(trial: optuna.Trial) -> None:
    """Record which process runs `trial`."""
    trial.set_user_attr(WORKER_ATTR, worker_id())
    trial.set_user_attr(BOOT_ATTR, boot_id())
    started = process_started(os.getpid())
    if started is not None:
        trial.set_user_attr(STARTED_ATTR, started)


def owner_is_dead(trial: FrozenTrial, beating: set[int], started_grace_seconds: float) -> bool:
    """True when the process that runs this RUNNING trial certainly no longer runs it.

    - no owner recorded and started more than `started_grace_seconds` ago: its process stopped between
      asking for the trial and recording itself;
    - this process, but not among the trials it keeps alive (`beating`): left over by an earlier
      pipeline run in the same long-lived process, after an exception;
    - another process of this machine (same host name and boot) that does not exist any more, or whose
      process id now names a process started at another time (recorded since the journal default; older
      trials lack it and are judged by the process id alone).
    """
    worker = trial.user_attrs.get(WORKER_ATTR)
    if not isinstance(worker, str):
        started = trial.datetime_start or dt.datetime.now()
        return (dt.datetime.now() - started).total_seconds() > started_grace_seconds
    host, _, pid_text = worker.rpartition("-")
    if host != socket.gethostname() or trial.user_attrs.get(BOOT_ATTR) != boot_id() or not pid_text.isdigit():
        return False  # another machine's process: only its heartbeat can tell
    pid = int(pid_text)
    if pid == os.getpid():
        return trial_id(trial) not in beating
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, owned by someone else: its start time still tells whether it is the same process
    recorded = trial.user_attrs.get(STARTED_ATTR)
    now = process_started(pid)
    return recorded is not None and now is not None and recorded != now


class HeartbeatKeeper:
    """The trials this process is running, and a heartbeat for each every `interval` seconds when the
    storage records heartbeats (`storage` None: a journal, where the set alone is kept)."""

    def __init__(self, storage: HeartbeatStorage | None, interval: float) -> None:
        self._storage = storage
        self._interval = interval
        self._trials: set[int] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, trial_id: int) -> None:
        """Start keeping `trial_id` alive (its first heartbeat is recorded before this returns)."""
        if self._storage is not None:
            self._storage.record_heartbeat(trial_id)
        with self._lock:
            self._trials.add(trial_id)
            if self._storage is not None and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._beat, name="stagetune-heartbeat", daemon=True)
                self._thread.start()

    def discard(self, trial_id: int) -> None:
        """Stop keeping `trial_id` alive (it has been told)."""
        with self._lock:
            self._trials.discard(trial_id)

    def beating(self) -> set[int]:
        """The trial ids this process keeps alive now."""
        with self._lock:
            return set(self._trials)

    def _beat(self) -> None:
        storage = self._storage
        assert storage is not None  # started only for a storage that records heartbeats
        while True:
            time.sleep(self._interval)
            for beating_id in self.beating():
                try:
                    storage.record_heartbeat(beating_id)
                except Exception as error:  # a storage hiccup: the next beat tries again
                    LOGGER.warning("heartbeat of trial %s not recorded: %s", beating_id, error)


_KEEPERS: dict[tuple[str, float], HeartbeatKeeper] = {}
_KEEPERS_LOCK = threading.Lock()


def keeper_for(url: str, study: optuna.Study, interval: float) -> HeartbeatKeeper:
    """This process's heartbeat keeper for the storage at `url`, which `study` is stored in (one that keeps
    no heartbeats, a journal, gets a keeper of the trial set only)."""
    storage = heartbeat_storage(study_storage(study))
    with _KEEPERS_LOCK:
        return _KEEPERS.setdefault((url, interval), HeartbeatKeeper(storage, interval))


def beating_trials() -> set[int]:
    """Every trial id any keeper of this process keeps alive."""
    with _KEEPERS_LOCK:
        keepers = list(_KEEPERS.values())
    return set().union(*(keeper.beating() for keeper in keepers))
