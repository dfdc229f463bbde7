"""Which process runs a trial, and whether that process is still alive.

Every process that runs trials records a heartbeat for each of them in the study's storage
(`HeartbeatKeeper`, one daemon thread per process and storage). A RUNNING trial is taken for dead
when its heartbeat is older than `stale_after_seconds` (Optuna's heartbeat rule), or at once when
it was started by a process of this machine (same host, same boot) that no longer exists: a
restarted pipeline does not wait out the grace period for the trials its killed predecessor left.
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


def mark_owner(trial: optuna.Trial) -> None:
    """Record which process runs `trial`."""
    trial.set_user_attr(WORKER_ATTR, worker_id())
    trial.set_user_attr(BOOT_ATTR, boot_id())


def owner_is_dead(trial: FrozenTrial, beating: set[int], started_grace_seconds: float) -> bool:
    """True when the process that runs this RUNNING trial certainly no longer runs it.

    - no owner recorded and started more than `started_grace_seconds` ago: its process stopped between
      asking for the trial and recording itself;
    - this process, but not among the trials it keeps alive (`beating`): left over by an earlier
      pipeline run in the same long-lived process, after an exception;
    - another process of this machine (same host name and boot) that does not exist any more.
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
        return False  # exists, owned by someone else
    return False


class HeartbeatKeeper:
    """Records a heartbeat every `interval` seconds for each trial this process is running."""

    def __init__(self, storage: HeartbeatStorage, interval: float) -> None:
        self._storage = storage
        self._interval = interval
        self._trials: set[int] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, trial_id: int) -> None:
        """Start keeping `trial_id` alive (its first heartbeat is recorded before this returns)."""
        self._storage.record_heartbeat(trial_id)
        with self._lock:
            self._trials.add(trial_id)
            if self._thread is None or not self._thread.is_alive():
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
        while True:
            time.sleep(self._interval)
            for beating_id in self.beating():
                try:
                    self._storage.record_heartbeat(beating_id)
                except Exception as error:  # a storage hiccup: the next beat tries again
                    LOGGER.warning("heartbeat of trial %s not recorded: %s", beating_id, error)


_KEEPERS: dict[tuple[str, float], HeartbeatKeeper] = {}
_KEEPERS_LOCK = threading.Lock()


def keeper_for(url: str, study: optuna.Study, interval: float) -> HeartbeatKeeper:
    """This process's heartbeat keeper for the storage at `url`, which `study` is stored in."""
    storage = heartbeat_storage(study_storage(study))
    if storage is None:
        raise TypeError(f"storage {url!r} cannot record heartbeats: use an RDB (SQLite/PostgreSQL) storage")
    with _KEEPERS_LOCK:
        return _KEEPERS.setdefault((url, interval), HeartbeatKeeper(storage, interval))


def beating_trials() -> set[int]:
    """Every trial id any keeper of this process keeps alive."""
    with _KEEPERS_LOCK:
        keepers = list(_KEEPERS.values())
    return set().union(*(keeper.beating() for keeper in keepers))
