"""MLflow calls that ride out a tracking server or object store being unreachable for a while.

`RetryingClient` is an `MlflowClient` whose calls that stagetune makes are retried on transient
failures (`stagetune.tracking.faults.is_transient`) with exponential backoff and jitter, for up to a
time window; any other error (a bad parameter, a resource that exists or does not) is raised at
once. The retry loop is tenacity's; the rules (what is transient, the window, one warning per
outage episode) are stagetune's.

Two retry layers would multiply: MLflow's own HTTP layer retries each request with urllib3 on
connection errors and 408/429/5xx, by default for minutes. This layer owns the time budget;
`MLFLOW_HTTP_ENV` keeps MLflow's short, so the window means what it says.

Permanent faults are not retried: a read-only or unwritable database, file or folder, a full disk,
a schema that does not match this MLflow, credentials the server refuses (HTTP 401/403). They
raise `StoreError` at once, one paragraph naming the store, what failed and the fix, instead of
retrying for the whole window. While a transient outage lasts, one warning line is printed for
the whole episode (not one per call or per thread), and MLflow's own per-error traceback of its
SQL store is kept out of the terminal.

Retrying is only safe for idempotent calls. Params, tags, terminal states and artifacts are
(the same value written twice); metrics are deduplicated by the store (same key, value, step and
timestamp). The two creators that are not get a client-made request id as a tag, and a retry
first looks for what an attempt whose answer was lost already created: `create_run` and
`create_model_version`. Creating an experiment or a registered model is retried too: a second
attempt after a lost answer fails with RESOURCE_ALREADY_EXISTS, which callers handle. Other
calls (including other `create_*`) are `MlflowClient`'s own, not retried.
"""

import itertools
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar, overload

import tenacity
from mlflow.entities import Run, ViewType
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from mlflow.tracking._model_registry import DEFAULT_AWAIT_MAX_SLEEP_SECONDS

from schemas.urls import redact_url
from stagetune.errors import StoreError
from stagetune.runtime import MLFLOW_HTTP_ENV
from stagetune.tracking.faults import (
    describe_error,
    is_transient,
    permanent_fault,
    quiet_mlflow_store_logs,
    store_error,
)

__all__ = ["DEFAULT_RETRY_SECONDS", "MLFLOW_HTTP_ENV", "REQUEST_TAG", "RetryPolicy", "RetryingClient"]
__all__ += ["call_with_retry", "is_transient"]

T = TypeVar("T")
P = ParamSpec("P")

DEFAULT_RETRY_SECONDS = 180.0
REQUEST_TAG = "stagetune.request_id"
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

    def attempt() -> T:
        try:
            return call()
        except Exception as error:
            kind = permanent_fault(error)
            if kind is not None:
                raise store_error(error, what, store, kind) from error
            raise

    def before_retry(state: tenacity.RetryCallState) -> None:
        nonlocal retries
        error = state.outcome.exception() if state.outcome is not None else None
        if retries == 0 and _start_episode():
            described = describe_error(error) if error is not None else "?"
            _logger.warning("MLflow unreachable (%s), retrying %s for up to %.0f s", described, what, policy.window_s)
        retries += 1

    def next_delay(state: tenacity.RetryCallState) -> float:
        # The last wait is cut so the last attempt falls at the window's end, never past it.
        return max(0.0, min(policy.delay(state.attempt_number - 1, jitter()), policy.window_s - (clock() - started)))

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(lambda error: not isinstance(error, StoreError) and is_transient(error)),
        stop=lambda _state: clock() - started >= policy.window_s,
        wait=next_delay,
        sleep=sleep,
        before_sleep=before_retry,
        reraise=True,
    )
    try:
        result = retrying(attempt)
    except StoreError:
        _end_episode()
        raise
    except Exception as error:
        if is_transient(error):  # the window ran out
            _end_episode()
            if retries:
                error.add_note(
                    f"stagetune: {what} was retried for {clock() - started:.0f} s ({retries + 1} attempts); "
                    "a longer tracking.io_retry_seconds waits longer for the tracking server"
                )
        raise
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


class _Retried(Generic[P, T]):
    """A `RetryingClient` attribute: `MlflowClient.<name>` called through the client's retry, same signature.

    `MlflowClient`'s method is looked up at call time, so one patched in tests (or by a plugin) is what runs.
    """

    def __init__(self, method: Callable[Concatenate[MlflowClient, P], T]) -> None:
        self.name = method.__name__
        self.__doc__ = f"`MlflowClient.{self.name}`, retried through outages (see `RetryingClient`)."

    def __set_name__(self, owner: type, name: str) -> None:
        if name != self.name:
            raise TypeError(f"{owner.__name__}.{name} would call MlflowClient.{self.name}: name it {self.name}")

    @overload
    def __get__(self, client: None, owner: type) -> Self: ...
    @overload
    def __get__(self, client: "RetryingClient", owner: type) -> Callable[P, T]: ...
    def __get__(self, client: "RetryingClient | None", owner: type) -> "Self | Callable[P, T]":
        if client is None:
            return self
        method = getattr(MlflowClient, self.name)

        def retried(*args: P.args, **kwargs: P.kwargs) -> T:
            return client._retry(self.name, lambda: method(client, *args, **kwargs))

        return retried


class RetryingClient(MlflowClient):
    """An `MlflowClient` whose calls retry transient failures for up to `retry_seconds` (0: never).

    The retried calls are listed in the class body (the calls stagetune makes; a test fails when a
    new one is not listed); any other method is `MlflowClient`'s own, tried once. Calls made by a
    retried call (e.g. `log_figure` -> `log_artifact`) are not retried on their own: the outer call
    is, as a whole, so the windows do not stack.
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

    # The other calls stagetune makes: reads, and writes that are idempotent (see the module docstring).
    create_experiment = _Retried(MlflowClient.create_experiment)  # a lost answer: RESOURCE_ALREADY_EXISTS
    create_registered_model = _Retried(MlflowClient.create_registered_model)  # likewise
    download_artifacts = _Retried(MlflowClient.download_artifacts)
    get_experiment_by_name = _Retried(MlflowClient.get_experiment_by_name)
    get_logged_model = _Retried(MlflowClient.get_logged_model)
    get_metric_history = _Retried(MlflowClient.get_metric_history)
    get_model_version = _Retried(MlflowClient.get_model_version)
    get_model_version_by_alias = _Retried(MlflowClient.get_model_version_by_alias)
    get_registered_model = _Retried(MlflowClient.get_registered_model)
    get_run = _Retried(MlflowClient.get_run)
    log_artifact = _Retried(MlflowClient.log_artifact)
    log_batch = _Retried(MlflowClient.log_batch)
    log_dict = _Retried(MlflowClient.log_dict)
    log_figure = _Retried(MlflowClient.log_figure)
    log_text = _Retried(MlflowClient.log_text)
    search_model_versions = _Retried(MlflowClient.search_model_versions)
    search_runs = _Retried(MlflowClient.search_runs)
    set_experiment_tag = _Retried(MlflowClient.set_experiment_tag)
    set_logged_model_tags = _Retried(MlflowClient.set_logged_model_tags)
    set_model_version_tag = _Retried(MlflowClient.set_model_version_tag)
    set_registered_model_alias = _Retried(MlflowClient.set_registered_model_alias)
    set_tag = _Retried(MlflowClient.set_tag)
    set_terminated = _Retried(MlflowClient.set_terminated)
    update_model_version = _Retried(MlflowClient.update_model_version)
    update_run = _Retried(MlflowClient.update_run)
