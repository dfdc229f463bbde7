"""`stack up / down`: the local S3 + MLflow (+ Prefect) stack as plain functions.

`stack_up` is idempotent: a service whose recorded PID still runs is kept, a dead or missing one
is started; then the settings the pipeline reads are written to `stack.env` (mode 0600): the S3
endpoint and keys, MLflow's URL and login, Prefect's API URL and auth string.
`stack_down` stops every process it started, by PID.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from schemas.urls import redact_url
from stagetune.settings import (
    MLFLOW_PASSWORD_VARIABLE,
    MLFLOW_USERNAME_VARIABLE,
    PREFECT_AUTH_VARIABLE,
    PREFECT_URL_VARIABLE,
    SETTINGS_FILE_VARIABLE,
)
from stagetune.stack.auth import ServiceAuth, load_or_create_auth, write_mlflow_auth_config
from stagetune.stack.credentials import S3Credentials, load_or_create_credentials
from stagetune.stack.envfile import write_env_file
from stagetune.stack.health import StackError, ensure_bucket, wait_healthy
from stagetune.stack.paths import StackPaths, prepare_state
from stagetune.stack.plan import Plan, StackOptions, check_options, plan_ports, resolve_stores, save_stores
from stagetune.stack.postgres import ensure_database, is_postgres
from stagetune.stack.procs import ProcessRecord, forget, is_running, read_record, stop_pid, stop_pids
from stagetune.stack.services import (
    MLFLOW,
    PREFECT,
    SEAWEED,
    SERVICES,
    remove_stale_sockets,
    start_mlflow,
    start_prefect,
    start_seaweed,
)
from stagetune.stack.status import ServiceStatus, describe, is_healthy


@dataclass(frozen=True)
class StackInfo:
    """The result of `stack up`."""

    paths: StackPaths
    services: list[ServiceStatus]
    settings: dict[str, str] = field(repr=False)
    credentials: S3Credentials = field(repr=False)
    auth: ServiceAuth = field(repr=False)

    @property
    def export_line(self) -> str:
        """The one line a shell needs to point `stagetune` at this stack."""
        return f"export {SETTINGS_FILE_VARIABLE}={self.paths.env_file}"

    def service(self, name: str) -> ServiceStatus:
        """The status of one service."""
        return next(s for s in self.services if s.service == name)


def stack_up(paths: StackPaths, options: StackOptions) -> StackInfo:
    """Start whatever of the stack is not running, wait until healthy, write `stack.env`.

    Options, ports and databases are checked before anything is created or started.
    """
    check_options(options)
    wanted = [SEAWEED, MLFLOW]
    if options.prefect or read_record(paths, PREFECT) is not None:
        wanted.append(PREFECT)
    requested = {SEAWEED: options.s3_port, MLFLOW: options.mlflow_port, PREFECT: options.prefect_port}
    plans = plan_ports(paths, {name: requested[name] for name in wanted})
    refuse_open_servers(plans)
    stores = resolve_stores(paths, options)
    for url, option in ((stores.backend_store_uri, "--backend-store-uri"), (stores.optuna_storage, "--optuna-storage")):
        if url and is_postgres(url):
            ensure_database(url, option)

    prepare_state(paths)
    save_stores(paths, stores)
    credentials = load_or_create_credentials(paths)
    auth = load_or_create_auth(paths)
    write_mlflow_auth_config(paths, auth)
    record, started = _launch(paths, plans[SEAWEED], lambda port: start_seaweed(paths, port))
    statuses = {SEAWEED: _wait(paths, record, started, credentials, options.timeout_s)}
    s3_url = record.url
    ensure_bucket(s3_url, credentials, stores.bucket)
    starters: dict[str, Callable[[int], ProcessRecord]] = {
        MLFLOW: lambda port: start_mlflow(
            paths,
            port,
            s3_endpoint_url=s3_url,
            credentials=credentials,
            auth=auth,
            bucket=stores.bucket,
            backend_store_uri=stores.backend_store_uri,
            backend_display=redact_url(stores.backend_store_uri),
        ),
        PREFECT: lambda port: start_prefect(paths, port, auth),
    }
    # MLflow and Prefect are both started before either is waited for: their start-ups overlap.
    launched = [_launch(paths, plans[name], starters[name]) for name in wanted[1:]]
    for record, started in launched:
        statuses[record.service] = _wait(paths, record, started, credentials, options.timeout_s)

    settings = stack_settings(statuses, credentials, auth, stores.optuna_storage)
    write_env_file(paths.env_file, settings)
    return StackInfo(paths, [statuses[name] for name in SERVICES if name in statuses], settings, credentials, auth)


def stack_down(paths: StackPaths, timeout_s: float = 15.0) -> list[ServiceStatus]:
    """Stop every recorded process by PID (all at once), remove the PID files and `stack.env`.

    SeaweedFS can take several seconds to stop gracefully once it has run a while, hence the timeout.
    Data, credentials and logs stay in the state folder.
    """
    records = [record for name in reversed(SERVICES) if (record := read_record(paths, name)) is not None]
    running = [record for record in records if is_running(record)]
    stop_pids([record.pid for record in running], timeout_s)
    stopped = [ServiceStatus(r.service, r.pid, r.port, r.url, "stopped" if r in running else "dead") for r in records]
    for record in records:
        if record.service == SEAWEED:
            remove_stale_sockets(record)
    for name in SERVICES:
        forget(paths, name)
    paths.env_file.unlink(missing_ok=True)
    return stopped


def stack_settings(
    services: dict[str, ServiceStatus], credentials: S3Credentials, auth: ServiceAuth, optuna_storage: str | None
) -> dict[str, str]:
    """The KEY=VALUE settings of `stack.env` (read by stagetune.settings.load_settings)."""
    settings = {
        "MLFLOW_TRACKING_URI": services[MLFLOW].url or "",
        MLFLOW_USERNAME_VARIABLE: auth.mlflow_username,
        MLFLOW_PASSWORD_VARIABLE: auth.mlflow_password,
        "STAGETUNE_S3_ENDPOINT_URL": services[SEAWEED].url or "",
        "AWS_ACCESS_KEY_ID": credentials.access_key_id,
        "AWS_SECRET_ACCESS_KEY": credentials.secret_access_key,
    }
    if PREFECT in services:
        settings[PREFECT_URL_VARIABLE] = services[PREFECT].url or ""
        settings[PREFECT_AUTH_VARIABLE] = auth.prefect_auth_string
    if optuna_storage:
        settings["STAGETUNE_OPTUNA_STORAGE"] = optuna_storage
    return settings


def refuse_open_servers(plans: dict[str, Plan]) -> None:
    """A server kept running must have been started with its login (not by a stagetune before it had one)."""
    for plan in plans.values():
        if plan.service in (MLFLOW, PREFECT) and plan.running is not None and "auth" not in plan.running.details:
            raise StackError(
                f"{plan.service} (PID {plan.running.pid}) was started without authentication by an older "
                "stagetune: run `stagetune stack down`, then `stagetune stack up` to restart it with a login"
            )


def _launch(paths: StackPaths, plan: Plan, start: Callable[[int], ProcessRecord]) -> tuple[ProcessRecord, bool]:
    """The running process of the plan's service (kept), or a new one on the planned port."""
    if plan.running is not None:
        return plan.running, False
    stale = read_record(paths, plan.service)
    if stale is not None and stale.service == SEAWEED:
        remove_stale_sockets(stale)  # a killed SeaweedFS leaves its /tmp sockets behind
    forget(paths, plan.service)
    return start(plan.port), True


def _wait(
    paths: StackPaths, record: ProcessRecord, started: bool, credentials: S3Credentials, timeout_s: float
) -> ServiceStatus:
    """Wait until the service is healthy; one this call started is stopped again if it never gets there."""
    try:
        wait_healthy(
            record.service,
            lambda: is_healthy(record, credentials),
            timeout_s=timeout_s,
            alive=lambda: is_running(record),
            log_file=paths.log_file(record.service),
        )
    except Exception:
        if started:
            stop_pid(record.pid, 5.0)
            forget(paths, record.service)
        raise
    seconds = time.time() - record.started_at if started else None
    return ServiceStatus(
        record.service, record.pid, record.port, record.url, "healthy", started, seconds, describe(record)
    )
