"""Health checks of the stack's services, and the S3 client the stack (and its tests) use."""

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stagetune.stack.credentials import S3Credentials

S3_REGION = "us-east-1"


class StackError(Exception):
    """A service of the stack did not start or did not become healthy (exit code 1)."""


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """Whether GET `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def s3_client(endpoint_url: str, credentials: S3Credentials | None, **config: Any) -> Any:
    """A boto3 S3 client for `endpoint_url`: signed with `credentials`, or unsigned when None."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    options: dict[str, Any] = {"retries": {"max_attempts": 2}, "connect_timeout": 3, "read_timeout": 30}
    options.update(config)
    if credentials is None:
        options["signature_version"] = UNSIGNED
        return boto3.client("s3", endpoint_url=endpoint_url, region_name=S3_REGION, config=Config(**options))
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=S3_REGION,
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        config=Config(**options),
    )


def s3_ok(endpoint_url: str, credentials: S3Credentials) -> bool:
    """Whether the S3 endpoint answers a signed ListBuckets."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(endpoint_url, credentials, retries={"max_attempts": 1})
    try:
        client.list_buckets()
    except (BotoCoreError, ClientError):
        return False
    finally:
        client.close()  # no idle keep-alive connection left on the server's port
    return True


def ensure_bucket(endpoint_url: str, credentials: S3Credentials, bucket: str) -> bool:
    """Create `bucket` unless it exists; True when it was created."""
    from botocore.exceptions import ClientError

    client = s3_client(endpoint_url, credentials)
    try:
        client.head_bucket(Bucket=bucket)
        return False
    except ClientError as error:
        if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
            raise
        client.create_bucket(Bucket=bucket)
        return True
    finally:
        client.close()


def wait_healthy(
    service: str,
    check: Callable[[], bool],
    *,
    timeout_s: float,
    alive: Callable[[], bool] | None = None,
    log_file: Path | None = None,
) -> float:
    """Poll `check` until it passes; return the seconds it took.

    Raises StackError when `alive` reports the process gone, or after `timeout_s`, with the end of
    the service's log.
    """
    started = time.monotonic()
    delay = 0.1
    while True:
        if check():
            return time.monotonic() - started
        if alive is not None and not alive():
            raise StackError(f"{service} exited during start-up.{_log_tail(log_file)}")
        if time.monotonic() - started > timeout_s:
            raise StackError(f"{service} was not healthy after {timeout_s:.0f} s.{_log_tail(log_file)}")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


def _log_tail(log_file: Path | None, lines: int = 15) -> str:
    if log_file is None or not log_file.exists():
        return ""
    tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return f" Last lines of {log_file}:\n" + "\n".join(tail)
