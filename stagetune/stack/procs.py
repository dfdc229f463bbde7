"""Starting, finding and stopping the stack's processes by PID.

Each service is started in its own session (so it outlives the command and its process group is
its own), with its output appended to `logs/<service>.log`, its PID in `pids/<service>.pid` and a
record of what was started (port, URL, a marker of its command line; never a secret) beside it.
A PID counts as ours only while its command line still holds that marker: a reused PID is not.
"""

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from stagetune.stack.health import StackError
from stagetune.stack.paths import StackPaths

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ProcessRecord:
    """What was started for one service (written next to its PID file; holds no secrets)."""

    service: str
    pid: int
    port: int
    url: str
    marker: str
    started_at: float
    ports: dict[str, int] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)


def start_process(
    paths: StackPaths,
    service: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    port: int,
    url: str,
    marker: str,
    ports: Mapping[str, int] | None = None,
    details: Mapping[str, str] | None = None,
) -> ProcessRecord:
    """Start `argv` detached in its own session, log to the service's log file, record its PID."""
    log_path = paths.log_file(service)
    with log_path.open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {service} on port {port}\n".encode())
        log.flush()
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=paths.root,
            start_new_session=True,
        )
    log_path.chmod(0o600)
    record = ProcessRecord(service, process.pid, port, url, marker, time.time(), dict(ports or {}), dict(details or {}))
    paths.pid_file(service).write_text(f"{process.pid}\n", encoding="utf-8")
    paths.record_file(service).write_text(json.dumps(asdict(record), indent=2), encoding="utf-8")
    return record


def read_record(paths: StackPaths, service: str) -> ProcessRecord | None:
    """The record of `service`, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(paths.record_file(service).read_text(encoding="utf-8"))
        pid = int(paths.pid_file(service).read_text(encoding="utf-8").strip())
        return ProcessRecord(**{**data, "pid": pid})
    except (OSError, ValueError, TypeError):
        return None


def forget(paths: StackPaths, service: str) -> None:
    """Remove the PID file and record of `service`."""
    paths.pid_file(service).unlink(missing_ok=True)
    paths.record_file(service).unlink(missing_ok=True)


def is_running(record: ProcessRecord) -> bool:
    """Whether the recorded PID is alive, not a zombie, and still the program that was started."""
    _reap(record.pid)
    proc = Path(f"/proc/{record.pid}")
    if not proc.parent.is_dir():  # no /proc (macOS): trust the PID
        return _pid_exists(record.pid)
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and record.marker in command


def stop_pid(pid: int, timeout_s: float = 15.0) -> bool:
    """SIGTERM the process (and its process group when it leads one), SIGKILL after `timeout_s`.

    Returns True when something was running. Waits until every process of the group is gone.
    """
    return bool(stop_pids([pid], timeout_s))


def stop_pids(pids: Sequence[int], timeout_s: float = 15.0) -> list[int]:
    """`stop_pid` for several processes at once (all signalled first, so their shutdowns overlap).

    Returns the PIDs that were running.
    """
    groups = {pid: _own_group(pid) for pid in pids}
    signalled = [pid for pid in pids if _signal(pid, groups[pid], signal.SIGTERM)]
    deadline = time.monotonic() + timeout_s
    remaining = list(signalled)
    while remaining and time.monotonic() < deadline:
        time.sleep(0.1)
        remaining = [pid for pid in remaining if _alive(pid, groups[pid])]
    for pid in remaining:
        _signal(pid, groups[pid], signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = [pid for pid in remaining if _alive(pid, groups[pid])]
    return signalled


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether nothing listens on `host:port` (a test bind, as the servers will do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def wait_port_free(port: int, timeout_s: float) -> bool:
    """Whether `port` becomes free within `timeout_s` (a killed server's sockets close a moment after it)."""
    deadline = time.monotonic() + timeout_s
    while not port_is_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def free_port(avoid: set[int] | None = None) -> int:
    """A free loopback port in 10000..31999, not in `avoid`."""
    return free_port_pair(0, avoid)


def free_ports(count: int) -> list[int]:
    """`count` different free loopback ports."""
    chosen: list[int] = []
    for _ in range(count):
        chosen.append(free_port(set(chosen)))
    return chosen


def free_port_pair(offset: int = 10000, avoid: set[int] | None = None) -> int:
    """A free port P whose P + `offset` is free too (SeaweedFS puts gRPC there); offset 0: one port.

    Both stay in 10000..31999, below Linux's ephemeral range (32768-) where outgoing connections
    take their local ports, so a port picked here is not taken by a client before a server binds it.
    """
    avoid = avoid or set()
    for _ in range(200):
        port = random.randrange(10000, 32000 - offset)
        if {port, port + offset} & avoid:
            continue
        if port_is_free(port) and port_is_free(port + offset):
            return port
    raise StackError(f"no free pair of ports {offset} apart on {LOOPBACK} in 10000..31999")


def _own_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _signal(pid: int, group: bool, signum: signal.Signals) -> bool:
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def _alive(pid: int, group: bool) -> bool:
    _reap(pid)
    if group:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return False
        return _group_has_live_member(pid)
    return _pid_exists(pid) and not _is_zombie(pid)


def _group_has_live_member(pgid: int) -> bool:
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _reap(pid: int) -> None:
    # A service started by this very process (tests) stays a zombie until waited for.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
