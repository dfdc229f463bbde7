"""The local stack: SeaweedFS (S3), an MLflow tracking server and optionally a Prefect server on loopback.

Plain functions; `stagetune.cli_stack` is the thin command layer over them.
"""

from schemas.urls import redact_url
from stagetune.stack.auth import ServiceAuth, load_or_create_auth, read_auth
from stagetune.stack.credentials import S3Credentials, load_or_create_credentials, read_credentials
from stagetune.stack.health import StackError, ensure_bucket, http_ok, s3_client, s3_ok, wait_healthy
from stagetune.stack.paths import StackPaths, resolve_paths
from stagetune.stack.plan import StackOptions
from stagetune.stack.postgres import drop_database, ensure_database
from stagetune.stack.procs import ProcessRecord, is_running, read_record, stop_pid
from stagetune.stack.services import (
    ARTIFACT_PREFIX,
    MLFLOW,
    PREFECT,
    SEAWEED,
    start_mlflow,
    start_prefect,
    start_seaweed,
)
from stagetune.stack.stack import StackInfo, stack_down, stack_up
from stagetune.stack.status import ServiceStatus, stack_status

__all__ = [
    "ARTIFACT_PREFIX",
    "MLFLOW",
    "PREFECT",
    "SEAWEED",
    "ProcessRecord",
    "S3Credentials",
    "ServiceAuth",
    "ServiceStatus",
    "StackError",
    "StackInfo",
    "StackOptions",
    "StackPaths",
    "drop_database",
    "ensure_bucket",
    "ensure_database",
    "http_ok",
    "is_running",
    "load_or_create_auth",
    "load_or_create_credentials",
    "read_auth",
    "read_credentials",
    "read_record",
    "redact_url",
    "resolve_paths",
    "s3_client",
    "s3_ok",
    "stack_down",
    "stack_status",
    "stack_up",
    "start_mlflow",
    "start_prefect",
    "start_seaweed",
    "stop_pid",
    "wait_healthy",
]
