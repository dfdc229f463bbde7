"""MLflow calls that ride out a tracking server or object store being unreachable for a while.

`RetryingClient` is an `MlflowClient` whose public calls are retried on transient failures
(connection refused or reset, timeouts, HTTP 429/5xx, botocore endpoint errors, SQLite's
"database is locked") with exponential backoff and jitter, for up to a time window; any other
error (a bad parameter, a resource that exists or does not) is raised at once.

Two retry layers would multiply: MLflow's own HTTP layer retries each request with urllib3 on
connection errors and 408/429/5xx (`MLFLOW_HTTP_REQUEST_MAX_RETRIES` 7, backoff factor 2: waits
of 0, 4, 8, ... 120 s, each try with a 120 s timeout); an upload while S3 was down failed only
after ~300 s there. This layer owns the time budget; `MLFLOW_HTTP_ENV` keeps MLflow's short
(an upload then fails in ~3-16 s), so the window means what it says.

Permanent faults are not retried: a read-only or unwritable database, file or folder, a full disk,
a schema that does not match this MLflow, credentials the server refuses (HTTP 401/403). They
raise `StoreError` at once, one paragraph naming the store, what failed and the fix; a store that
turns read-only mid-run used to be retried for ~5 minutes, printing a traceback per try. While a
transient outage lasts, one warning line is printed for the whole episode (not one per call or
per thread), and MLflow's own per-error traceback of its SQL store is kept out of the terminal.

Retrying is only safe for idempotent calls. Params, tags, terminal states and artifacts are
(the same value written twice); metrics are deduplicated by the store (same key, value, step and
timestamp). The two creators that are not get a client-made request id as a tag, and a retry
first looks for what an attempt whose answer was lost already created: `create_run` and
`create_model_version`. Creating an experiment or a registered model is retried too: a second
attempt after a lost answer fails with RESOURCE_ALREADY_EXISTS, which callers handle. Other
`create_*` calls are not retried.
"""

import functools
import itertools
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
import urllib3.exceptions
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError as BotoHTTPClientError
from mlflow.entities import Run, ViewType
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking._model_registry import DEFAULT_AWAIT_MAX_SLEEP_SECONDS

from schemas.urls import redact_url
from stagetune.tracking.faults import (
    describe_error,
    error_chain,
    http_status,
    permanent_fault,
    quiet_mlflow_store_logs,
    store_error,
)

T = TypeVar("T")

DEFAULT_RETRY_SECONDS = 180.0
REQUEST_TAG = "stagetune.request_id"
# MLflow's own per-request retries, kept short (defaults for the pipeline's process): 2 quick
# retries (after 0 s, then 2 s) and 60 s per try instead of 7 retries over ~4 min and 120 s. Two,
# not none: a keep-alive connection the server dropped (it does after a failed upload) is retried at once.
MLFLOW_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}
# Creators retried although not made idempotent here: a lost answer shows as RESOURCE_ALREADY_EXISTS.
_UNIQUE_BY_NAME = frozenset({"create_experiment", "create_registered_model"})
_TRANSIENT_ERROR_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"})
_TRANSIENT_TEXT = re.compile(
    r"database is locked|too many (429|5\d\d) error responses|connection (refused|reset|aborted)", re.IGNORECASE
)
_logger = logging.getLogger(__name__)
_inside_retry = threading.local()
# One warning per outage episode (all calls and threads together): from the first retry until a retried
# call goes through or gives up.
_episode = {"open": False}
_episode_lock = threading.Lock()


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often a failing call is tried again."""

    window_s: float = DEFAULT_RETRY_SECONDS
    first_delay_s: float = 0.5
    max_delay_s: float = 15.0

    def delay(self, retry: int, jitter: float) -> float:
        """Seconds before retry `retry` (0-based): doubling up to the cap; `jitter` (0..1) picks in its upper half."""
        base = min(self.max_delay_s, self.first_delay_s * 2 ** min(retry, 32))
        return base * (0.5 + 0.5 * jitter)


def is_transient(error: BaseException) -> bool:
    """Whether `error`, or any exception it was raised from, is an outage that may pass."""
    return permanent_fault(error) is None and any(_is_transient_link(link) for link in error_chain(error))


def call_with_retry(
    call: Callable[[], T],
    what: str,
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    jitter: Callable[[], float] = random.random,
    store: str = "(tracking URI)",
) -> T:
    """`call()`, tried again on transient errors until `policy.window_s` has passed since the first try.

    A permanent fault (see `permanent_fault`) raises `StoreError` at once. One warning is logged when
    an outage episode starts (the first retry of any call while none is being retried). The last
    attempt is made at the end of the window; if it fails too, its error is raised with a note
    saying how long it was retried.
    """
    started = clock()
    retries = 0
    while True:
        try:
            result = call()
        except Exception as error:
            elapsed = clock() - started
            kind = permanent_fault(error)
            if kind is not None:
                _end_episode()
                raise store_error(error, what, store, kind) from error
            if not is_transient(error):
                raise
            if elapsed >= policy.window_s:
                _end_episode()
                if retries:
                    error.add_note(
                        f"stagetune: {what} was retried for {elapsed:.0f} s ({retries + 1} attempts); "
                        "a longer tracking.io_retry_seconds waits longer for the tracking server"
                    )
                raise
            if retries == 0 and _start_episode():
                _logger.warning(
                    "MLflow unreachable (%s), retrying %s for up to %.0f s",
                    describe_error(error),
                    what,
                    policy.window_s,
                )
            sleep(min(policy.delay(retries, jitter()), policy.window_s - elapsed))
            retries += 1
            continue
        if retries:
            _end_episode()
            _logger.info("%s went through after %d retries (%.1f s)", what, retries, clock() - started)
        return result


def _start_episode() -> bool:
    """Open an outage episode; False if one is already open (its warning was printed)."""
    with _episode_lock:
        opened, _episode["open"] = not _episode["open"], True
        return opened


def _end_episode() -> None:
    with _episode_lock:
        _episode["open"] = False


class RetryingClient(MlflowClient):
    """An `MlflowClient` whose calls retry transient failures for up to `retry_seconds` (0: never).

    Calls made by a retried call (e.g. `log_figure` -> `log_artifact`) are not retried on their
    own: the outer call is, as a whole, so the windows do not stack.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        registry_uri: str | None = None,
        *,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        quiet_mlflow_store_logs()
        super().__init__(tracking_uri=tracking_uri, registry_uri=registry_uri)
        self.retry_policy = RetryPolicy(window_s=retry_seconds)
        self._sleep = sleep
        self._clock = clock

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        if getattr(_inside_retry, "active", False):
            return call()
        _inside_retry.active = True
        store = redact_url(self.tracking_uri)
        try:
            return call_with_retry(call, what, self.retry_policy, sleep=self._sleep, clock=self._clock, store=store)
        finally:
            _inside_retry.active = False

    def create_run(
        self,
        experiment_id: str,
        start_time: int | None = None,
        tags: dict[str, Any] | None = None,
        run_name: str | None = None,
    ) -> Run:
        """`MlflowClient.create_run`; a retry returns the run an earlier attempt created, if any."""
        request_id = uuid.uuid4().hex
        tagged = {**(tags or {}), REQUEST_TAG: request_id}
        attempts = itertools.count()

        def create_once() -> Run:
            if next(attempts) > 0:
                found = MlflowClient.search_runs(
                    self,
                    [experiment_id],
                    filter_string=f"tags.`{REQUEST_TAG}` = '{request_id}'",
                    run_view_type=ViewType.ALL,
                    max_results=1,
                )
                if found:
                    return found[0]
            return MlflowClient.create_run(self, experiment_id, start_time, tagged, run_name)

        return self._retry("create_run", create_once)

    def create_model_version(
        self,
        name: str,
        source: str,
        run_id: str | None = None,
        tags: dict[str, Any] | None = None,
        run_link: str | None = None,
        description: str | None = None,
        await_creation_for: int = DEFAULT_AWAIT_MAX_SLEEP_SECONDS,
        model_id: str | None = None,
    ) -> ModelVersion:
        """`MlflowClient.create_model_version`; a retry returns the version an earlier attempt created, if any."""
        request_id = uuid.uuid4().hex
        tagged = {**(tags or {}), REQUEST_TAG: request_id}
        attempts = itertools.count()

        def create_once() -> ModelVersion:
            if next(attempts) > 0:
                query = f"run_id = '{run_id}'" if run_id else f"name = '{name}'"
                for version in MlflowClient.search_model_versions(self, query):
                    if version.name == name and (version.tags or {}).get(REQUEST_TAG) == request_id:
                        return version
            return MlflowClient.create_model_version(
                self, name, source, run_id, tagged, run_link, description, await_creation_for, model_id
            )

        return self._retry("create_model_version", create_once)


def _retrying(method: Callable[..., Any]) -> Callable[..., Any]:
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: RetryingClient, *args: Any, **kwargs: Any) -> Any:
        # Looked up at call time, so MlflowClient patched in tests (or by plugins) is what runs.
        return self._retry(name, lambda: getattr(MlflowClient, name)(self, *args, **kwargs))

    return wrapper


def _install_retries() -> None:
    """Give `RetryingClient` a retrying override of every public `MlflowClient` method it does not define."""
    for name, member in vars(MlflowClient).items():
        if name.startswith("_") or not callable(member) or isinstance(member, (staticmethod, classmethod)):
            continue
        if name in vars(RetryingClient) or (name.startswith("create_") and name not in _UNIQUE_BY_NAME):
            continue
        setattr(RetryingClient, name, _retrying(member))


_install_retries()


def _is_transient_link(error: BaseException) -> bool:
    if isinstance(error, requests.exceptions.SSLError):
        return False
    if isinstance(error, (ConnectionError, TimeoutError)):  # refused, reset, aborted, broken pipe, socket timeout
        return True
    if isinstance(
        error,
        (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.RetryError,  # urllib3 gave up on 429/5xx answers
            requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.ProtocolError,
            urllib3.exceptions.NewConnectionError,
            urllib3.exceptions.TimeoutError,
            BotoConnectionError,  # endpoint unreachable, connect timeout
            BotoHTTPClientError,  # connection closed, read timeout
        ),
    ):
        return True
    status = http_status(error)
    if status is not None and (status == 429 or status >= 500):
        return True
    if isinstance(error, MlflowException) and error.error_code in _TRANSIENT_ERROR_CODES:
        return True
    return bool(_TRANSIENT_TEXT.search(str(error)))
