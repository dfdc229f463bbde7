"""Reading a data file from S3 with timeouts that fit, a line while it waits, and errors that say whose fault.

botocore's defaults (60 s connect and read timeouts, several retries) times s3fs's own 5 retries
stalled a read from an endpoint that accepts connections and never answers for ~7 minutes, and
the error then blamed the file. Here a request gives up after about `attempts x read timeout`
(3 x 20 s by default; measured 63 s against a listener that never answers): an object store
answers a request in well under a second, and the read timeout is the longest silence *between*
bytes, not the length of the whole download, so a large file on a slow link is not cut short.
The connect timeout (10 s) covers a slow DNS lookup or TLS handshake; a refused port fails at
once. botocore's standard retry mode retries throttling, 5xx answers and timeouts within those
attempts; s3fs's own retry loop is switched off so the two do not multiply. All three are
settings (`STAGETUNE_S3_CONNECT_TIMEOUT`, `STAGETUNE_S3_READ_TIMEOUT`, `STAGETUNE_S3_MAX_ATTEMPTS`).

Network and credential problems are the user's configuration (exit code 2): the error names the
endpoint and the variable it came from, or the credential variables; only a file that was read
and does not parse is blamed on the file.
"""

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from stagetune.errors import InputError
from stagetune.settings import RuntimeSettings, load_settings

T = TypeVar("T")
LOGGER = logging.getLogger(__name__)
WAITING_LINE_AFTER_S = 5.0
CREDENTIAL_VARIABLES = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
_AUTH_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken")


def s3_options(settings: RuntimeSettings) -> dict[str, Any]:
    """`s3fs.S3FileSystem` arguments: the configured endpoint and keys, bounded timeouts and retries."""
    options: dict[str, Any] = {
        "config_kwargs": {
            "connect_timeout": settings.s3_connect_timeout,
            "read_timeout": settings.s3_read_timeout,
            "retries": {"mode": "standard", "total_max_attempts": settings.s3_max_attempts},
        },
        "skip_instance_cache": True,  # fsspec would otherwise hand back a filesystem with other timeouts
    }
    if settings.s3_endpoint_url:
        options["endpoint_url"] = settings.s3_endpoint_url
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        options["key"] = settings.aws_access_key_id.get_secret_value()
        options["secret"] = settings.aws_secret_access_key.get_secret_value()
    return options


def read_s3(source: str, read: Callable[[Any], T], settings: RuntimeSettings | None = None) -> T:
    """`read(handle)` on the binary handle of `source` (s3://bucket/key); an `InputError` naming the
    endpoint or the credentials when S3 cannot be reached, does not answer, or refuses the keys.

    Errors of `read` itself (a file that does not parse) propagate unchanged.
    """
    import s3fs  # deferred: only S3 sources pay for importing aiobotocore

    settings = settings or load_settings()
    filesystem = s3fs.S3FileSystem(**s3_options(settings))
    filesystem.retries = 1  # botocore retries (s3_max_attempts); s3fs's loop would multiply them
    with _waiting_line(source, settings):
        try:
            handle = filesystem.open(source, "rb")
        except Exception as error:
            raise s3_problem(source, error, settings) from None
        with handle:
            try:
                return read(handle)
            except Exception as error:
                if _network_or_auth(error):  # a later request of a streamed read failed
                    raise s3_problem(source, error, settings) from None
                raise


def s3_problem(source: str, error: BaseException, settings: RuntimeSettings) -> InputError:
    """The `InputError` for a failed S3 request: names the endpoint (and its variable) or the credentials."""
    endpoint, variable = endpoint_of(settings)
    kind = _network_or_auth(error)
    reason = _innermost(error)
    if kind == "timeout":
        waited = settings.s3_max_attempts * settings.s3_read_timeout
        return InputError(
            variable,
            f"the S3 endpoint {endpoint} did not answer a request for {source} ({settings.s3_max_attempts} "
            f"attempt(s), {settings.s3_read_timeout:g} s read timeout each, ~{waited:g} s in all: {reason}): "
            f"check that the endpoint is up and that {variable} points at it "
            "(STAGETUNE_S3_READ_TIMEOUT waits longer for a slow one)",
        )
    if kind == "unreachable":
        return InputError(
            variable,
            f"the S3 endpoint {endpoint} cannot be reached for {source} ({reason}): check that it is running "
            f"and that {variable} names its host and port",
        )
    if kind == "auth":
        return InputError(
            CREDENTIAL_VARIABLES,
            f"the S3 endpoint {endpoint} refused the credentials reading {source} ({reason}): set "
            f"{CREDENTIAL_VARIABLES} (in the environment or the STAGETUNE_SETTINGS_FILE) to a key that may "
            "read this bucket",
        )
    if kind == "no credentials":
        return InputError(
            CREDENTIAL_VARIABLES,
            f"no S3 credentials were found to read {source} from {endpoint} ({reason}): set {CREDENTIAL_VARIABLES} "
            "(in the environment or the STAGETUNE_SETTINGS_FILE)",
        )
    if isinstance(error, FileNotFoundError):
        return InputError("data.source", f"{source!r} does not exist at {endpoint}: check the bucket and key")
    return InputError("data.source", f"{source!r} cannot be read from {endpoint} ({reason}): check the URI")


def endpoint_of(settings: RuntimeSettings) -> tuple[str, str]:
    """(the endpoint a read goes to, the variable that sets it)."""
    names = ("STAGETUNE_S3_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")
    variable = next((name for name in names if os.environ.get(name)), names[0])
    if settings.s3_endpoint_url:
        return settings.s3_endpoint_url, variable
    return "AWS S3 (no endpoint set)", variable


def _network_or_auth(error: BaseException) -> str | None:
    """'timeout', 'unreachable', 'auth' or 'no credentials' when `error` (or what raised it) is one; else None."""
    from botocore import exceptions as boto

    for link in _chain(error):
        name = type(link).__name__
        if isinstance(link, boto.ReadTimeoutError | boto.ConnectTimeoutError | TimeoutError) or "Timeout" in name:
            return "timeout"
        if isinstance(link, boto.EndpointConnectionError | boto.ConnectionClosedError | ConnectionError):
            return "unreachable"
        if name in ("ClientConnectorError", "ServerDisconnectedError", "ClientOSError"):  # aiohttp's
            return "unreachable"
        if isinstance(link, boto.NoCredentialsError | boto.PartialCredentialsError):
            return "no credentials"
        if isinstance(link, PermissionError):  # s3fs's translation of 403 AccessDenied and friends
            return "auth"
        if isinstance(link, boto.ClientError):
            code = str(link.response.get("Error", {}).get("Code", ""))
            status = link.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _AUTH_CODES or status in (401, 403):
                return "auth"
    return None


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _innermost(error: BaseException) -> str:
    last = list(_chain(error))[-1]
    text = " ".join(str(last).split())[:200]
    return f"{type(last).__name__}: {text}" if text else type(last).__name__


@contextmanager
def _waiting_line(source: str, settings: RuntimeSettings) -> Iterator[None]:
    """One warning line if the read is still going after a few seconds (a silent stall looks like a hang)."""
    endpoint, _ = endpoint_of(settings)
    timer = threading.Timer(
        WAITING_LINE_AFTER_S,
        LOGGER.warning,
        (
            "waiting for %s at %s (not done after %.0f s; each attempt gives up after %g s of silence, %d attempt(s))",
            source,
            endpoint,
            WAITING_LINE_AFTER_S,
            settings.s3_read_timeout,
            settings.s3_max_attempts,
        ),
    )
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
