"""What `stack up` is asked for, checked against what already runs, before anything starts.

Options left out keep the values of the previous `up` (saved, mode 0600, in `options.json`: a
backend store URL may hold a password), so a restarted service comes back exactly as it was.
"""

import json
import re
from dataclasses import asdict, dataclass

from schemas.urls import redact_url
from stagetune.atomic_file import write_text_atomically
from stagetune.errors import InputError
from stagetune.settings import load_settings
from stagetune.stack.paths import StackPaths
from stagetune.stack.postgres import SQL_SCHEMES
from stagetune.stack.procs import ProcessRecord, is_running, read_record, wait_port_free
from stagetune.stack.services import DEFAULT_PORTS, MLFLOW, PREFECT, SEAWEED

DEFAULT_BUCKET = "stagetune"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
PORT_OPTIONS = {SEAWEED: "--s3-port", MLFLOW: "--mlflow-port", PREFECT: "--prefect-port"}


@dataclass(frozen=True)
class StackOptions:
    """What `stack up` starts. Left None: the previous `up`'s value (ports: the running one's), else the default."""

    s3_port: int | None = None
    mlflow_port: int | None = None
    prefect_port: int | None = None
    prefect: bool = False
    backend_store_uri: str | None = None
    optuna_storage: str | None = None
    bucket: str | None = None
    timeout_s: float = 120.0


@dataclass(frozen=True)
class Stores:
    """Where MLflow keeps runs and artifacts, and the Optuna storage written to the settings file."""

    backend_store_uri: str
    bucket: str
    optuna_storage: str | None


@dataclass(frozen=True)
class Plan:
    """One service: the port it will use, and its running process when it is kept."""

    service: str
    port: int
    running: ProcessRecord | None


def check_options(options: StackOptions) -> None:
    """Ports, bucket name and URLs are well-formed (InputError naming the option otherwise)."""
    ports = {"--s3-port": options.s3_port, "--mlflow-port": options.mlflow_port, "--prefect-port": options.prefect_port}
    for option, port in ports.items():
        if port is not None and not 1024 <= port <= 65535:
            raise InputError(option, f"{port} is not a port in 1024..65535")
    if options.bucket is not None and not _BUCKET.fullmatch(options.bucket):
        raise InputError("--bucket", f"{options.bucket!r} is not an S3 bucket name: 3-63 of a-z 0-9 . -")
    backend = options.backend_store_uri
    if backend is not None and backend.partition(":")[0] not in SQL_SCHEMES:
        raise InputError(
            "--backend-store-uri",
            f"{redact_url(backend)!r} is not a database URL: use sqlite:///path.db or "
            "postgresql+psycopg://user@host:port/database",
        )
    if options.optuna_storage is not None:
        try:
            load_settings({"STAGETUNE_OPTUNA_STORAGE": options.optuna_storage})
        except InputError as error:
            raise InputError("--optuna-storage", error.message) from None


def resolve_stores(paths: StackPaths, options: StackOptions) -> Stores:
    """The options, else the previous `up`'s, else the defaults; a running MLflow cannot switch stores."""
    saved = _load_saved(paths)
    stores = Stores(
        backend_store_uri=options.backend_store_uri or saved.get("backend_store_uri") or f"sqlite:///{paths.mlflow_db}",
        bucket=options.bucket or saved.get("bucket") or DEFAULT_BUCKET,
        optuna_storage=options.optuna_storage or saved.get("optuna_storage"),
    )
    record = read_record(paths, MLFLOW)
    if record is not None and is_running(record) and saved:
        for option, new, old in (
            ("--backend-store-uri", stores.backend_store_uri, saved.get("backend_store_uri")),
            ("--bucket", stores.bucket, saved.get("bucket")),
        ):
            if new != old:
                raise InputError(
                    option,
                    f"MLflow already runs with {redact_url(old or '')!r} (PID {record.pid}): run "
                    "`stagetune stack down` first to switch it",
                )
    return stores


def save_stores(paths: StackPaths, stores: Stores) -> None:
    """Remember the stores for the next `up` (mode 0600)."""
    write_text_atomically(paths.root / "options.json", json.dumps(asdict(stores), indent=2), fsync=False, private=True)


def plan_ports(paths: StackPaths, requested: dict[str, int | None]) -> dict[str, Plan]:
    """Keep each running service; pick the port of each other one and check that it is free."""
    plans: dict[str, Plan] = {}
    for name, port in requested.items():
        record = read_record(paths, name)
        if record is not None and is_running(record):
            if port is not None and port != record.port:
                raise InputError(
                    PORT_OPTIONS[name],
                    f"{name} already runs on port {record.port} (PID {record.pid}): run `stagetune stack down` "
                    f"first to move it to port {port}",
                )
            plans[name] = Plan(name, record.port, record)
            continue
        chosen = port or (record.port if record is not None else DEFAULT_PORTS[name])
        # A dead service's own port: its last threads may still be closing their sockets.
        grace = 10.0 if record is not None and chosen == record.port else 0.0
        if not wait_port_free(chosen, grace) or chosen in {plan.port for plan in plans.values()}:
            raise InputError(
                PORT_OPTIONS[name],
                f"port {chosen} on 127.0.0.1 is already in use by another program or service (not {name} of "
                f"this stack): stop that program or pick a free port with {PORT_OPTIONS[name]}",
            )
        plans[name] = Plan(name, chosen, None)
    return plans


def _load_saved(paths: StackPaths) -> dict[str, str]:
    try:
        data = json.loads((paths.root / "options.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}
