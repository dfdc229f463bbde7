"""The state of the stack's services: healthy, running but unhealthy, dead (stale PID file) or stopped."""

from dataclasses import dataclass, field

from stagetune.stack.credentials import S3Credentials, read_credentials
from stagetune.stack.health import http_ok, s3_ok
from stagetune.stack.paths import StackPaths
from stagetune.stack.procs import ProcessRecord, is_running, read_record
from stagetune.stack.services import SERVICES, health_url


@dataclass(frozen=True)
class ServiceStatus:
    """One service as `stack up` and `stack status` report it."""

    service: str
    pid: int | None
    port: int | None
    url: str | None
    state: str  # healthy | unhealthy | dead | stopped
    started: bool = False
    seconds: float | None = None
    details: dict[str, str] = field(default_factory=dict)


def is_healthy(record: ProcessRecord, credentials: S3Credentials | None) -> bool:
    """MLflow's /health or Prefect's /api/health answers 200; S3 answers a signed ListBuckets."""
    url = health_url(record)
    if url is not None:
        return http_ok(url)
    return credentials is not None and s3_ok(record.url, credentials)


def describe(record: ProcessRecord) -> dict[str, str]:
    """What `status` shows beside the port: stores, SeaweedFS's internal loopback ports."""
    details = dict(record.details)
    if record.ports:
        details["loopback ports"] = ", ".join(f"{k} {v}" for k, v in record.ports.items())
    return details


def stack_status(paths: StackPaths) -> list[ServiceStatus]:
    """Each service: PID, port, URL and its state."""
    credentials = read_credentials(paths) if paths.identities_file.exists() else None
    result: list[ServiceStatus] = []
    for name in SERVICES:
        record = read_record(paths, name)
        if record is None:
            result.append(ServiceStatus(name, None, None, None, "stopped"))
            continue
        state = "dead"
        if is_running(record):
            state = "healthy" if is_healthy(record, credentials) else "unhealthy"
        result.append(ServiceStatus(name, record.pid, record.port, record.url, state, details=describe(record)))
    return result
