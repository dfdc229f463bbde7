"""Prefect's temporary API server, started in a child process as soon as `stagetune run` has a valid config.

Without `PREFECT_API_URL`, Prefect 3 runs a temporary ("ephemeral") API server in a child process,
started the first time a flow needs a client, and waits for its health check. Started that way
the run waits for its whole start after the flow's imports, and starting it from a thread of this
process does not help: importing Prefect's server modules holds the GIL against the flow's own
imports, which then take about twice as long (figures: bench/README.md). Here the child process
imports and starts the server itself, on another core, while this process imports the flow;
`wait()` then points this process's Prefect settings at it. The child is started as soon as the
config is valid, before the store check (whose SQLAlchemy import overlaps the child's start). The
child runs the server as Prefect's own temporary server does (`prefect.server.api.server:create_app`
under uvicorn, UI off, marked ephemeral) and stops with this process (at exit, or by the kernel if
this process is killed).

Flow runs on that server send no heartbeats (`without_flow_heartbeats`): Prefect's heartbeat thread
sleeps in one-second steps and the end of every flow run waits for it (0.5 s on average, up to 1 s of
each run's wall time), while heartbeats only serve to mark a run crashed on a server that outlives it,
and this one dies with the run.
"""

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import IO

NOT_NEEDED_EXIT = 11  # the child found an API URL in Prefect's settings (a profile): no server wanted
# Block types are not registered: no stagetune flow loads a block, and their registration is about a quarter
# of a cold server start's CPU (3.7 of 15.9 s, loaded machine: bench/README.md, issue 18). The server's
# telemetry service is off: a temporary server that lives for one run has nothing to report, and on a
# machine without a network its lookups fail and its first write meets the migrations' lock on a new database.
_SERVER_ENV = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
    "PREFECT_API_BLOCKS_REGISTER_ON_START": "0",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "0",
}
_FALSE = ("0", "false", "no", "off")


class EarlyApiServer:
    """Prefect's temporary API server, starting in a child process (or not needed: `process` is None)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self._log: IO[bytes] | None = None

    @property
    def api_url(self) -> str:
        """The server's API URL (`PREFECT_API_URL`)."""
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> "EarlyApiServer":
        """Launch the child unless Prefect is already pointed at an API; return at once."""
        if not _needs_temporary_server():
            return self
        # Open for the server's lifetime (its output, shown if it fails to start); closed in stop().
        self._log = tempfile.TemporaryFile(prefix="stagetune-prefect-api-")  # noqa: SIM115
        self.port = _free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stagetune.prefect_startup", str(self.port)],
            env={**os.environ, **_SERVER_ENV},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        atexit.register(self.stop)
        return self

    def wait(self) -> None:
        """Block until the server answers its health check, then make this process's Prefect use it.

        Does nothing when no server was started, and stops the child when Prefect's settings (a
        profile) name an API after all. Raises RuntimeError, with the child's output, when the server
        exits or does not answer within PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.
        """
        if self.process is None:
            return
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

        if PREFECT_API_URL.value():  # set in a Prefect profile: that API is used, as Prefect would
            self.stop()
            return
        deadline = time.monotonic() + float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        while not _healthy(self.api_url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = self._output()
                self.stop()
                raise RuntimeError(f"Prefect's temporary API server did not start: {output}")
            time.sleep(0.05)
        from prefect.context import refresh_global_settings_context

        os.environ["PREFECT_API_URL"] = self.api_url  # also for processes started later (Dask workers)
        refresh_global_settings_context()

    def flow_settings(self) -> contextlib.AbstractContextManager[None]:
        """The Prefect settings a flow run on this server runs under: no heartbeats on the temporary server
        (started here); a server named by PREFECT_API_URL or a profile keeps Prefect's own."""
        return without_flow_heartbeats() if self.process is not None else contextlib.nullcontext()

    def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after 5 s)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        text = self._log.read().decode(errors="replace").strip()
        return text[-3000:] or f"exit code {self.process.poll() if self.process else None}, no output"


def start_api_server_early() -> EarlyApiServer:
    """Start Prefect's temporary API server in a child process when this run needs one; call `wait()`
    on the result before the first flow run."""
    return EarlyApiServer().start()


@contextlib.contextmanager
def without_flow_heartbeats() -> Iterator[None]:
    """Flow runs started inside send no heartbeats: for a server that ends with this process (ours, Prefect's
    own temporary one, a test's), where nothing outlives the run to notice that they stopped."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _needs_temporary_server() -> bool:
    if "prefect" in sys.modules:  # already imported (e.g. a test harness): ask its settings
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

        return not PREFECT_API_URL.value() and bool(PREFECT_SERVER_EPHEMERAL_ENABLED.value())
    # Not imported yet (importing it is slow): the environment decides; a profile is checked in `wait()`.
    enabled = os.environ.get("PREFECT_SERVER_EPHEMERAL_ENABLED", "true").strip().lower() not in _FALSE
    return not os.environ.get("PREFECT_API_URL") and enabled


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _die_with_parent() -> None:
    # Linux: the kernel sends SIGTERM to the server when this process dies, even by SIGKILL.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _serve(port: int) -> int:
    """The child: run Prefect's API server app on `port` until terminated."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return NOT_NEEDED_EXIT
    import uvicorn

    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        log_level="error",
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    sys.exit(_serve(int(sys.argv[1])))
