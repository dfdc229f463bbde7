"""Which MLflow store errors are outages that may pass (retried) and which retrying cannot fix.

Transient: connection refused or reset, timeouts, HTTP 429/5xx, botocore endpoint errors, SQLite's
"database is locked", anywhere in the chain of exceptions MLflow raised.

Permanent (each becomes one paragraph naming the fix): a read-only or unwritable database, file or
folder, a full disk, a schema that does not match this MLflow, credentials the server refuses (HTTP
401/403). Recognised by the errno of an `OSError`, the HTTP status of an answer, or what the
database said, anywhere in the chain (MLflow's SQL store wraps every `OperationalError` as
TEMPORARILY_UNAVAILABLE, so the code alone cannot tell a locked database from a read-only one).
"""

import errno
import logging
import re
from collections.abc import Iterator

import requests
import urllib3.exceptions
from botocore.exceptions import ClientError as BotoClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError as BotoHTTPClientError
from mlflow.exceptions import MlflowException, RestException

from stagetune.errors import StoreError

# Faults that retrying cannot fix, by what the store or the OS said (SQLite, PostgreSQL, MySQL, OSError text).
PERMANENT_TEXT = (
    ("read-only", re.compile(r"readonly database|read-only (file system|database|transaction)|\bEROFS\b", re.I)),
    ("permission denied", re.compile(r"permission denied|unable to open database file|\bEACCES\b|\bEPERM\b", re.I)),
    ("disk full", re.compile(r"database or disk is full|no space left on device|disk quota exceeded", re.I)),
    ("disk I/O error", re.compile(r"disk I/O error", re.I)),
    (
        "schema mismatch",
        re.compile(
            r"no such (table|column)|out-of-date database schema|can't locate revision|undefined(table|column)", re.I
        ),
    ),
    ("credentials refused", re.compile(r"error code 40[13]\b|\b(401|403) (client error|unauthorized|forbidden)", re.I)),
)
_TRANSIENT_ERROR_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"})
_TRANSIENT_TEXT = re.compile(
    r"database is locked|too many (429|5\d\d) error responses|connection (refused|reset|aborted)", re.IGNORECASE
)
PERMANENT_ERRNOS = {
    errno.EROFS: "read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk full",
}
FIXES = {
    "read-only": "make the store writable again (a read-only file, folder or mount: give this user write "
    "permission on the database file, its folder and the artifact folder, or remount read-write)",
    "permission denied": "give this user write permission on the store (database file, its folder, artifact folder)",
    "disk full": "free disk space where the store lives (or raise the quota)",
    "disk I/O error": "check the disk and the database file (it may have been replaced or made read-only while open)",
    "schema mismatch": "the database was made by another MLflow version: upgrade it (`mlflow db upgrade URI`) "
    "or use a new database",
    "credentials refused": "set the credentials the tracking server expects (MLFLOW_TRACKING_USERNAME / "
    "MLFLOW_TRACKING_PASSWORD, or the stack's STAGETUNE_SETTINGS_FILE)",
}


def is_transient(error: BaseException) -> bool:
    """Whether `error`, or any exception it was raised from, is an outage that may pass."""
    return permanent_fault(error) is None and any(_is_transient_link(link) for link in error_chain(error))


def permanent_fault(error: BaseException) -> str | None:
    """What kind of fault retrying cannot fix `error` (or what it was raised from) is, e.g. "read-only"; else None."""
    for link in error_chain(error):
        if isinstance(link, OSError) and link.errno in PERMANENT_ERRNOS:
            return PERMANENT_ERRNOS[link.errno]
        status = http_status(link)
        if status in (401, 403):
            return "credentials refused"
        text = str(link)
        for kind, pattern in PERMANENT_TEXT:
            if pattern.search(text):
                return kind
    return None


def store_error(error: BaseException, what: str, store: str, kind: str) -> StoreError:
    """The one-paragraph error for a permanent fault of `store` met by call `what`."""
    return StoreError(
        f"the MLflow store {store} failed permanently ({kind}) during {what}: {describe_error(error)}. Retrying "
        f"cannot fix this, so the run stopped now (exit code 1; it can be continued). Fix: {FIXES[kind]}; "
        "then run the same command again, which continues this run where it stopped."
    )


class _DropSqlStoreTracebacks(logging.Filter):
    """MLflow's SQL store logs a traceback for each database error before raising it; the retry layer
    reports the error itself (one warning per episode, or a `StoreError`), so the record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("SQLAlchemy database error")


def quiet_mlflow_store_logs() -> None:
    """Install the filter on MLflow's SQL store logger (once per process)."""
    store_logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _DropSqlStoreTracebacks) for f in store_logger.filters):
        store_logger.addFilter(_DropSqlStoreTracebacks())


def error_chain(error: BaseException) -> Iterator[BaseException]:
    """The error, what it was raised from or during, and urllib3's wrapped reasons; each once."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        link = pending.pop()
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        pending += [link.__cause__, link.__context__, _reason(link)]


def _deeper(error: BaseException) -> BaseException | None:
    return error.__cause__ or error.__context__ or _reason(error)


def _reason(error: BaseException) -> BaseException | None:
    """urllib3's MaxRetryError keeps the error it gave up on in `reason`, not in the exception chain."""
    reason = getattr(error, "reason", None)
    return reason if isinstance(reason, BaseException) else None


def http_status(error: BaseException) -> int | None:
    """The HTTP status of an answer a server actually gave (not MLflow's default code of a local error)."""
    if isinstance(error, requests.exceptions.HTTPError) and error.response is not None:
        return int(error.response.status_code)
    if isinstance(error, RestException):
        return int(error.get_http_status_code())
    if isinstance(error, BotoClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


def describe_error(error: BaseException) -> str:
    """The innermost cause, one line: e.g. `ConnectionRefusedError: [Errno 111] Connection refused`."""
    innermost, seen = error, {id(error)}
    while (deeper := _deeper(innermost)) is not None and id(deeper) not in seen:
        innermost = deeper
        seen.add(id(deeper))
    text = " ".join(str(innermost).split())
    return f"{type(innermost).__name__}: {text[:200]}"


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
