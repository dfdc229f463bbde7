"""Start Prefect's temporary API server early, so that its start overlaps the pipeline's imports.

Without `PREFECT_API_URL`, Prefect 3 runs a temporary ("ephemeral") API server in a child process,
started the first time a flow needs a client (`get_client` -> `SubprocessASGIServer().start()`),
and waits for its health check: ~4-6 s here, all of it on the critical path because the flow's
imports (torch, MLflow, scikit-learn: ~9 s) came first. `SubprocessASGIServer` keeps one instance
per port, so starting it on a thread before those imports hands the flow an already running server.
"""

import threading


class EarlyApiServer:
    """Prefect's temporary API server, being started on a background thread (if the run needs one)."""

    def __init__(self) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, name="stagetune-prefect-api", daemon=True)

    def start(self) -> "EarlyApiServer":
        """Begin starting the server; return at once."""
        self._thread.start()
        return self

    def wait(self) -> None:
        """Block until the server is up (or was not needed); raise what its start raised, e.g.
        Prefect's own time-out error, as the flow's client would have."""
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _start(self) -> None:
        try:
            _start_if_needed()
        except BaseException as error:
            self._error = error


def start_api_server_early() -> EarlyApiServer:
    """Start Prefect's temporary API server in the background when no `PREFECT_API_URL` is set and
    ephemeral mode is on; call `wait()` on the result before the first flow run."""
    return EarlyApiServer().start()


def _start_if_needed() -> None:
    # Prefect reads its settings at import: the caller configured the process before this runs.
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    # The test `get_client` makes before it starts the server itself.
    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    SubprocessASGIServer().start()
