"""MLflow calls retried through brief outages: backoff, the window, what is not retried, no duplicate runs."""

import errno
import http.server
import json
import logging
import pickle
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError, EndpointConnectionError
from matplotlib.figure import Figure
from mlflow.entities import Param
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient

import stagetune
from stagetune.errors import StoreError
from stagetune.stack.procs import free_port
from stagetune.tracking.faults import permanent_fault
from stagetune.tracking.io_retry import (
    REQUEST_TAG,
    RetryingClient,
    RetryPolicy,
    call_with_retry,
    is_transient,
)
from stagetune.tracking.run_tree import RunTree, ensure_experiment, log_params

LOGGER = "stagetune.tracking.io_retry"


class FakeTime:
    """A clock that only moves when slept on; records the sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _wrapped(cause: BaseException) -> MlflowException:
    """An error as MLflow's REST layer raises it: a generic MlflowException raised while handling `cause`."""
    try:
        raise cause
    except BaseException:
        try:
            raise MlflowException(f"API request to http://127.0.0.1:5000 failed with exception {cause}")
        except MlflowException as error:
            return error


def _flaky(failures: int, error: Callable[[], BaseException], value: str = "ok") -> Callable[[], str]:
    calls = {"n": 0}

    def call() -> str:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise error()
        return value

    return call


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def test_a_call_that_fails_a_few_times_is_retried_with_doubling_delays(
    fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    refused = _flaky(5, lambda: _wrapped(requests.exceptions.ConnectionError("Connection refused")))
    policy = RetryPolicy(window_s=180, first_delay_s=0.5, max_delay_s=4)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        value = call_with_retry(
            refused, "log_batch", policy, sleep=fake_time.sleep, clock=fake_time.clock, jitter=lambda: 1.0
        )
    assert value == "ok"
    assert fake_time.sleeps == [0.5, 1.0, 2.0, 4.0, 4.0]  # doubling, capped
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["MLflow unreachable (ConnectionError: Connection refused), retrying log_batch for up to 180 s"]
    assert any("log_batch went through after 5 retries" in r.getMessage() for r in caplog.records)


def test_jitter_picks_within_the_upper_half_of_each_delay() -> None:
    policy = RetryPolicy(first_delay_s=0.5, max_delay_s=15)
    assert [policy.delay(n, 0.0) for n in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 7.5, 7.5]
    assert policy.delay(3, 0.5) == 3.0
    assert policy.delay(10_000, 0.999) < 15.0  # no overflow far into a long outage


def test_a_non_transient_error_is_raised_at_once(fake_time: FakeTime, caplog: pytest.LogCaptureFixture) -> None:
    invalid = _flaky(1, lambda: MlflowException("Changing param values is not allowed", INVALID_PARAMETER_VALUE))
    with pytest.raises(MlflowException, match="Changing param values"):
        call_with_retry(invalid, "log_batch", RetryPolicy(), sleep=fake_time.sleep, clock=fake_time.clock)
    assert fake_time.sleeps == []
    assert not caplog.records


def test_retries_stop_at_the_end_of_the_window_with_one_last_attempt(
    fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[float] = []

    def down() -> str:
        attempts.append(fake_time.now)
        raise _wrapped(ConnectionRefusedError(111, "Connection refused"))

    policy = RetryPolicy(window_s=30, first_delay_s=0.5, max_delay_s=15)
    with pytest.raises(MlflowException) as caught:
        call_with_retry(down, "log_artifact", policy, sleep=fake_time.sleep, clock=fake_time.clock, jitter=lambda: 1)
    assert sum(fake_time.sleeps) == pytest.approx(30)  # never past the window
    assert attempts[-1] == pytest.approx(attempts[0] + 30)  # the last try is at the window's end
    assert fake_time.sleeps == [0.5, 1, 2, 4, 8, 14.5]  # the last wait cut to the window's end
    assert len(attempts) == 7
    assert "retried for 30 s (7 attempts)" in "".join(caught.value.__notes__)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1  # one warning per call


def test_a_zero_window_means_no_retry(fake_time: FakeTime) -> None:
    with pytest.raises(ConnectionResetError):
        call_with_retry(
            _flaky(1, ConnectionResetError), "x", RetryPolicy(window_s=0), sleep=fake_time.sleep, clock=fake_time.clock
        )
    assert fake_time.sleeps == []


def _client_error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionRefusedError(111, "Connection refused"), True),
        (_wrapped(requests.exceptions.ConnectionError("Max retries exceeded")), True),
        (_wrapped(requests.exceptions.ReadTimeout("read timed out")), True),
        (_wrapped(requests.exceptions.RetryError("too many 500 error responses")), True),
        (RestException({"error_code": "INTERNAL_ERROR", "message": "S3 down"}), True),  # the artifact proxy's 500
        (RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}), True),
        (MlflowException("(sqlite3.OperationalError) database is locked"), True),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:8333"), True),
        (_client_error(503, "SlowDown"), True),
        (_client_error(403, "AccessDenied"), False),
        (RestException({"error_code": "RESOURCE_ALREADY_EXISTS", "message": "exists"}), False),
        (RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "param changed"}), False),
        (MlflowException("Run 'abc' not found"), False),  # a local error: INTERNAL_ERROR by default, not a 500
        (_wrapped(requests.exceptions.SSLError("certificate verify failed")), False),
        (FileNotFoundError("no such file"), False),
        (ValueError("bad"), False),
    ],
)
def test_which_errors_are_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def _sql_store_error(message: str) -> MlflowException:
    """What MLflow's SQL store raises for any OperationalError: TEMPORARILY_UNAVAILABLE, whatever the cause."""
    try:
        raise sqlite3.OperationalError(message)
    except sqlite3.OperationalError as cause:
        try:
            raise MlflowException(f"(sqlite3.OperationalError) {message}", TEMPORARILY_UNAVAILABLE) from cause
        except MlflowException as error:
            return error


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (_sql_store_error("attempt to write a readonly database"), "read-only"),
        (_sql_store_error("unable to open database file"), "permission denied"),
        (_sql_store_error("database or disk is full"), "disk full"),
        (_sql_store_error("disk I/O error"), "disk I/O error"),
        (_sql_store_error("no such table: runs"), "schema mismatch"),
        # A server whose own store turned read-only answers 503 with the database's words.
        (
            RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "attempt to write a readonly database"}),
            "read-only",
        ),
        (_wrapped(PermissionError(errno.EACCES, "Permission denied", "/srv/mlartifacts/1")), "permission denied"),
        (OSError(errno.ENOSPC, "No space left on device"), "disk full"),
        (OSError(errno.EROFS, "Read-only file system"), "read-only"),
        (_client_error(403, "AccessDenied"), "credentials refused"),
        (
            RestException({"error_code": "UNAUTHENTICATED", "message": "You are not authenticated"}),
            "credentials refused",
        ),
        (_sql_store_error("database is locked"), None),  # another writer: waiting helps
        (_wrapped(requests.exceptions.ConnectionError("Connection refused")), None),
        (RestException({"error_code": "RESOURCE_ALREADY_EXISTS", "message": "exists"}), None),
    ],
)
def test_permanent_store_faults_are_told_from_outages(error: BaseException, kind: str | None) -> None:
    assert permanent_fault(error) == kind
    if kind is not None:
        assert not is_transient(error)


def test_a_permanent_fault_stops_at_once_with_one_paragraph(
    fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    read_only = _flaky(10, lambda: _sql_store_error("attempt to write a readonly database"))
    with pytest.raises(StoreError) as caught:
        call_with_retry(
            read_only, "log_batch", RetryPolicy(), sleep=fake_time.sleep, clock=fake_time.clock, store="sqlite:///x.db"
        )
    assert fake_time.sleeps == []  # not retried
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("the MLflow store sqlite:///x.db failed permanently (read-only) during log_batch")
    assert "make the store writable" in message
    assert "run the same command again" in message
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_one_warning_per_outage_episode_whatever_the_calls_and_threads(caplog: pytest.LogCaptureFixture) -> None:
    down = threading.Event()
    failures: Counter[str] = Counter()

    def call(name: str) -> Callable[[], str]:
        def attempt() -> str:
            if down.is_set():
                failures[name] += 1
                raise _wrapped(requests.exceptions.ConnectionError("Connection refused"))
            return "ok"

        return attempt

    def run(name: str) -> None:
        call_with_retry(call(name), name, RetryPolicy(window_s=60, first_delay_s=0.01, max_delay_s=0.02))

    names = [f"call-{n}" for n in range(4)]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        down.set()
        threads = [threading.Thread(target=run, args=(name,)) for name in names]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while min(failures[name] for name in names) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        down.clear()  # the server is back: every call goes through
        for thread in threads:
            thread.join()
        episode = [r.getMessage() for r in caplog.records]
        down.set()
        threading.Timer(0.1, down.clear).start()
        run("later")  # a second outage after the first ended: warned again
    assert min(failures[name] for name in names) >= 3  # every call was retried during the outage
    assert len(episode) == 1, episode
    assert len(caplog.records) == 2


def test_mlflows_sql_store_traceback_per_error_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    RetryingClient(f"sqlite:///{tmp_path / 'm.db'}")
    store_logger = logging.getLogger("mlflow.store.db.utils")
    with caplog.at_level(logging.ERROR, logger="mlflow.store.db.utils"):
        try:
            raise sqlite3.OperationalError("disk I/O error")
        except sqlite3.OperationalError as error:
            store_logger.exception("SQLAlchemy database error. The following exception is caught.\n%s", error)
        store_logger.error("another message")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == ["another message"]


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, ensure_experiment(MlflowClient(uri), "t", (tmp_path / "artifacts").as_uri())


def _lose_first_answer(monkeypatch: pytest.MonkeyPatch, name: str) -> list[Any]:
    """Make `MlflowClient.<name>` do its work, then fail as if the answer was lost, the first time only."""
    real = getattr(MlflowClient, name)
    created: list[Any] = []

    def lossy(self: MlflowClient, *args: Any, **kwargs: Any) -> Any:
        result = real(self, *args, **kwargs)
        created.append(result)
        if len(created) == 1:
            raise _wrapped(requests.exceptions.ReadTimeout("Read timed out. (read timeout=60)"))
        return result

    monkeypatch.setattr(MlflowClient, name, lossy)
    return created


def test_create_run_retried_after_a_lost_answer_returns_the_run_it_created(
    store: tuple[str, str], monkeypatch: pytest.MonkeyPatch, fake_time: FakeTime
) -> None:
    uri, experiment_id = store
    created = _lose_first_answer(monkeypatch, "create_run")
    client = RetryingClient(uri, retry_seconds=60, sleep=fake_time.sleep, clock=fake_time.clock)
    run = client.create_run(experiment_id, run_name="once", tags={"k": "v"})
    assert len(created) == 1  # the retry found the run instead of creating a second one
    assert run.info.run_id == created[0].info.run_id
    assert len(fake_time.sleeps) == 1
    runs = MlflowClient(uri).search_runs([experiment_id])
    assert [r.info.run_name for r in runs] == ["once"]
    assert runs[0].data.tags["k"] == "v"
    assert REQUEST_TAG in runs[0].data.tags


def test_create_model_version_retried_after_a_lost_answer_creates_one_version(
    store: tuple[str, str], monkeypatch: pytest.MonkeyPatch, fake_time: FakeTime
) -> None:
    uri, experiment_id = store
    run_id = MlflowClient(uri).create_run(experiment_id).info.run_id
    created = _lose_first_answer(monkeypatch, "create_model_version")
    client = RetryingClient(uri, retry_seconds=60, sleep=fake_time.sleep, clock=fake_time.clock)
    client.create_registered_model("m")
    version = client.create_model_version("m", f"{uri}/x", run_id=run_id, tags={"role": "champion"})
    assert len(created) == 1
    assert str(version.version) == str(created[0].version) == "1"
    versions = MlflowClient(uri).search_model_versions("name = 'm'")
    assert [(str(v.version), v.tags["role"]) for v in versions] == [("1", "champion")]


def test_params_retried_after_a_lost_answer_are_accepted_again(
    store: tuple[str, str], monkeypatch: pytest.MonkeyPatch, fake_time: FakeTime
) -> None:
    uri, experiment_id = store
    run_id = MlflowClient(uri).create_run(experiment_id).info.run_id
    _lose_first_answer(monkeypatch, "log_batch")
    client = RetryingClient(uri, retry_seconds=60, sleep=fake_time.sleep, clock=fake_time.clock)
    log_params(client, run_id, {"a": 1, "b": "x"})  # the second, identical write is harmless
    assert MlflowClient(uri).get_run(run_id).data.params == {"a": "1", "b": "x"}
    with pytest.raises(MlflowException, match="Changing param values is not allowed"):  # not retried
        client.log_batch(run_id, params=[Param("a", "2")])
    assert len(fake_time.sleeps) == 1


def test_a_call_made_by_a_retried_call_is_not_retried_on_its_own(
    store: tuple[str, str], monkeypatch: pytest.MonkeyPatch, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    uri, experiment_id = store
    run_id = MlflowClient(uri).create_run(experiment_id).info.run_id
    real = MlflowClient.log_artifact
    failures = iter([True, True, False])

    def s3_down_twice(self: MlflowClient, *args: Any, **kwargs: Any) -> None:
        if next(failures):
            raise _wrapped(requests.exceptions.RetryError("too many 500 error responses"))
        real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_artifact", s3_down_twice)
    client = RetryingClient(uri, retry_seconds=60, sleep=fake_time.sleep, clock=fake_time.clock)
    client.log_figure(run_id, Figure(), "plots/curve.png")  # log_figure calls self.log_artifact
    assert len(fake_time.sleeps) == 2  # the outer call retried; the inner one did not add its own loop
    assert [r.getMessage().split(" for up to")[0] for r in caplog.records if r.levelno == logging.WARNING] == [
        "MLflow unreachable (RetryError: too many 500 error responses), retrying log_figure"
    ]
    assert [a.path for a in MlflowClient(uri).list_artifacts(run_id, "plots")] == ["plots/curve.png"]


def test_the_run_tree_is_small_picklable_and_hands_out_retrying_clients() -> None:
    tree = RunTree("http://127.0.0.1:5000", "1", "abc")  # positional, as workers build it
    assert tree.io_retry_seconds == 180.0
    assert pickle.loads(pickle.dumps(tree)) == tree
    short = RunTree("http://127.0.0.1:5000", "1", "abc", 5.0)
    assert isinstance(short.client, RetryingClient)
    assert short.client.retry_policy.window_s == 5.0


class _Experiments(http.server.BaseHTTPRequestHandler):
    """Just enough of an MLflow server to answer `get_experiment_by_name`."""

    def do_GET(self) -> None:
        body = json.dumps({"experiment": {"experiment_id": "7", "name": "t", "lifecycle_stage": "active"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def late_server() -> Iterator[tuple[int, Callable[[], None]]]:
    """A free port, and a function that starts an MLflow-like server on it."""
    port = free_port()
    servers: list[http.server.HTTPServer] = []

    def start() -> None:
        server = http.server.HTTPServer(("127.0.0.1", port), _Experiments)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)

    yield port, start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_tracking_server_that_comes_back_is_reached_through_mlflows_own_http_stack(
    late_server: tuple[int, Callable[[], None]], monkeypatch: pytest.MonkeyPatch, fake_time: FakeTime
) -> None:
    port, start = late_server
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own layer: one try per call here

    def sleep(seconds: float) -> None:
        fake_time.sleep(seconds)
        if len(fake_time.sleeps) == 3:
            start()  # the server is back after the third wait

    client = RetryingClient(f"http://127.0.0.1:{port}", retry_seconds=60, sleep=sleep, clock=fake_time.clock)
    experiment = client.get_experiment_by_name("t")
    assert experiment is not None
    assert experiment.experiment_id == "7"
    assert len(fake_time.sleeps) == 3


def test_every_mlflow_client_call_stagetune_makes_is_retried() -> None:
    """A new `client.<method>(` in the package must be added to RetryingClient (or it runs unretried)."""

    public = {name for name, member in vars(MlflowClient).items() if callable(member) and not name.startswith("_")}
    package = Path(stagetune.__file__).parent.parent
    sources = [
        p.read_text(encoding="utf-8")
        for folder in ("stagetune", "flows", "tasks")
        for p in (package / folder).rglob("*.py")
    ]
    called = {name for name in public for text in sources if re.search(rf"\.{name}\(", text)}
    retried = {name for name in public if name in vars(RetryingClient)}
    assert called, "the scan found no MlflowClient call at all"
    assert called <= retried, f"called but not retried: {sorted(called - retried)}"
