"""S3 data reads against endpoints that misbehave: a clear configuration error naming the endpoint, in bounded time.

The endpoints are real sockets on 127.0.0.1 started by the tests: one that accepts connections and
never answers (a hung server), and a port nothing listens on. Wrong keys against a real S3 server
are tested with the stack (tests/integration/test_stack_s3.py).
"""

import logging
import socket
import time
from collections.abc import Iterator

import pytest

from stagetune.data import remote
from stagetune.data.loading import read_table_file
from stagetune.errors import InputError
from stagetune.settings import load_settings
from stagetune.stack.procs import free_port


@pytest.fixture
def hung_endpoint() -> Iterator[str]:
    """http://127.0.0.1:PORT of a listener that accepts connections and never says a word."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # the kernel completes the handshakes; nobody ever reads or answers
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def _s3_environment(monkeypatch: pytest.MonkeyPatch, endpoint: str, read_timeout: float = 1.0) -> None:
    monkeypatch.setenv("STAGETUNE_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "STKTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    monkeypatch.setenv("STAGETUNE_S3_READ_TIMEOUT", str(read_timeout))
    monkeypatch.setenv("STAGETUNE_S3_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("STAGETUNE_S3_MAX_ATTEMPTS", "2")


def test_a_hung_endpoint_is_reported_within_the_timeouts_naming_it(
    hung_endpoint: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _s3_environment(monkeypatch, hung_endpoint)
    monkeypatch.setattr(remote, "WAITING_LINE_AFTER_S", 0.5)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="stagetune.data.remote"), pytest.raises(InputError) as caught:
        read_table_file("s3://bucket/data/train.csv")
    seconds = time.monotonic() - started
    # 2 attempts x 1 s read timeout (+ s3fs's HEAD then GET); the defaults give ~60 s, not 7 minutes.
    assert seconds < 15, seconds
    error = caught.value
    assert error.field == "STAGETUNE_S3_ENDPOINT_URL"
    assert hung_endpoint in error.message
    assert "did not answer" in error.message
    assert "s3://bucket/data/train.csv" in error.message
    assert "check the file" not in error.message  # not blamed on the file
    waiting = [r.getMessage() for r in caplog.records]
    assert waiting, "no waiting line while the read stalled"
    assert waiting[0].startswith(f"waiting for s3://bucket/data/train.csv at {hung_endpoint}")


def test_a_refused_endpoint_is_a_configuration_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    _s3_environment(monkeypatch, endpoint)
    monkeypatch.delenv("STAGETUNE_S3_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # the variable named is the one that was set
    started = time.monotonic()
    with pytest.raises(InputError) as caught:
        read_table_file("s3://bucket/data.parquet")
    assert time.monotonic() - started < 10
    assert caught.value.field == "AWS_ENDPOINT_URL"
    assert f"the S3 endpoint {endpoint} cannot be reached" in caught.value.message
    assert "Connect" in caught.value.message  # the OS's reason: connection refused


def test_s3_reads_use_the_settings_endpoint_keys_and_bounded_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    _s3_environment(monkeypatch, "http://127.0.0.1:8333", read_timeout=7)
    options = remote.s3_options(load_settings())
    assert options["endpoint_url"] == "http://127.0.0.1:8333"
    assert (options["key"], options["secret"]) == ("STKTEST", "not-a-real-secret")
    config = options["config_kwargs"]
    assert (config["connect_timeout"], config["read_timeout"]) == (1.0, 7.0)
    assert config["retries"] == {"mode": "standard", "total_max_attempts": 2}
    for name in ("STAGETUNE_S3_READ_TIMEOUT", "STAGETUNE_S3_CONNECT_TIMEOUT", "STAGETUNE_S3_MAX_ATTEMPTS"):
        monkeypatch.delenv(name)
    defaults = remote.s3_options(load_settings())["config_kwargs"]
    assert (defaults["connect_timeout"], defaults["read_timeout"], defaults["retries"]["total_max_attempts"]) == (
        10.0,
        20.0,
        3,
    )
    monkeypatch.setenv("STAGETUNE_S3_READ_TIMEOUT", "0")
    with pytest.raises(InputError) as caught:
        load_settings()
    assert caught.value.field == "STAGETUNE_S3_READ_TIMEOUT"
