"""The stack's plain functions without servers: settings file, credentials, URLs, state folder, PIDs."""

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from stagetune.errors import InputError
from stagetune.secret_masking import known_secrets, mask_text
from stagetune.settings import SETTINGS_FILE_VARIABLE, export_client_settings, load_settings
from stagetune.stack import (
    StackPaths,
    is_running,
    load_or_create_auth,
    load_or_create_credentials,
    read_auth,
    redact_url,
    resolve_paths,
    stop_pid,
)
from stagetune.stack.auth import write_mlflow_auth_config
from stagetune.stack.envfile import format_env, read_env_file, write_env_file
from stagetune.stack.health import StackError
from stagetune.stack.paths import prepare_state
from stagetune.stack.plan import Plan, StackOptions, Stores, resolve_stores, save_stores
from stagetune.stack.postgres import parse_postgres_url
from stagetune.stack.procs import ProcessRecord, forget, read_record, start_process
from stagetune.stack.stack import refuse_open_servers
from tests.conftest import REPO


def _paths(tmp_path: Path) -> StackPaths:
    paths = StackPaths(tmp_path / "state")
    prepare_state(paths)
    return paths


def test_settings_file_round_trips_into_the_pipeline_settings(tmp_path: Path) -> None:
    path = tmp_path / "stack.env"
    values = {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "STAGETUNE_S3_ENDPOINT_URL": "http://127.0.0.1:8333",
        "AWS_ACCESS_KEY_ID": "STKABC",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "STAGETUNE_OPTUNA_STORAGE": "postgresql+psycopg://u:p w@127.0.0.1:5432/db",
    }
    write_env_file(path, values)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "STAGETUNE_OPTUNA_STORAGE='postgresql+psycopg://u:p w@127.0.0.1:5432/db'" in path.read_text()
    assert read_env_file(path) == values
    settings = load_settings({SETTINGS_FILE_VARIABLE: str(path)})
    assert settings.tracking_uri == "http://127.0.0.1:5000"
    assert settings.s3_endpoint_url == "http://127.0.0.1:8333"
    assert settings.optuna_storage == values["STAGETUNE_OPTUNA_STORAGE"]
    assert settings.secrets() == ["STKABC", "s3cr3t"]
    with pytest.raises(ValueError, match="single quote"):
        format_env({"A": "it's"})


def test_credentials_are_generated_once_private_and_hidden_from_repr(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    first = load_or_create_credentials(paths)
    assert load_or_create_credentials(paths) == first
    assert stat.S_IMODE(paths.identities_file.stat().st_mode) == 0o600
    identity = json.loads(paths.identities_file.read_text())["identities"][0]
    assert identity["credentials"] == [{"accessKey": first.access_key_id, "secretKey": first.secret_access_key}]
    assert len(first.access_key_id) == 20
    assert len(first.secret_access_key) == 40
    assert first.secret_access_key not in repr(first)
    assert load_or_create_credentials(_paths(tmp_path / "other")) != first


def test_server_logins_are_generated_once_private_and_hidden_from_repr(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    assert read_auth(paths) is None
    first = load_or_create_auth(paths)
    assert load_or_create_auth(paths) == first == read_auth(paths)
    assert stat.S_IMODE(paths.auth_file.stat().st_mode) == 0o600
    assert len(first.mlflow_password) >= 12  # MLflow refuses shorter admin passwords
    assert first.prefect_auth_string.startswith("stagetune:")
    assert not [secret for secret in first.values() if secret in repr(first)]
    write_mlflow_auth_config(paths, first)
    ini = paths.mlflow_auth_config.read_text()
    assert stat.S_IMODE(paths.mlflow_auth_config.stat().st_mode) == 0o600
    assert "default_permission = NO_PERMISSIONS" in ini
    assert f"database_uri = sqlite:///{paths.mlflow_auth_db}" in ini
    assert "auth_cache_ttl_seconds = 300" in ini  # else PBKDF2 on every request: ~0.6 s each
    assert not [secret for secret in first.values() if secret in ini]
    # Lost logins: MLflow's user database (whose admin has the old password) goes with them.
    paths.mlflow_auth_db.write_bytes(b"users")
    paths.auth_file.unlink()
    second = load_or_create_auth(paths)
    assert second.mlflow_password != first.mlflow_password
    assert not paths.mlflow_auth_db.exists()


def test_up_refuses_to_keep_a_server_started_without_a_login() -> None:
    def plans(service: str, details: dict[str, str]) -> dict[str, Plan]:
        record = ProcessRecord(service, os.getpid(), 5000, "http://127.0.0.1:5000", "python", 0.0, details=details)
        return {service: Plan(service, 5000, record)}

    for service in ("mlflow", "prefect"):
        with pytest.raises(StackError, match=f"{service} .* without authentication.*stagetune stack down"):
            refuse_open_servers(plans(service, {"backend_store": "sqlite:///x.db"}))
        refuse_open_servers(plans(service, {"auth": "basic-auth, user stagetune"}))
    refuse_open_servers(plans("seaweed", {}))  # S3 auth is its identities file, checked by signed requests


def test_the_settings_file_s_logins_reach_the_clients_environment_and_are_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "stack.env"
    values = {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "MLFLOW_TRACKING_USERNAME": "stagetune",
        "MLFLOW_TRACKING_PASSWORD": "mlflow-password-0123456789",
        "PREFECT_API_URL": "http://127.0.0.1:4200/api",
        "PREFECT_API_AUTH_STRING": "stagetune:prefect-token-0123456789",
    }
    write_env_file(path, values)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
        monkeypatch.setenv(name, "")  # recorded, so monkeypatch restores the environment afterwards
        monkeypatch.delenv(name)
    monkeypatch.setenv(SETTINGS_FILE_VARIABLE, str(path))
    settings = load_settings()
    assert set(settings.secrets()) >= {"mlflow-password-0123456789", "stagetune:prefect-token-0123456789"}
    # Without asking for it, the Prefect API URL is left alone (`stagetune run` keeps its own Prefect).
    assert export_client_settings(settings) == [
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "PREFECT_API_AUTH_STRING",
    ]
    assert "PREFECT_API_URL" not in os.environ
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "mlflow-password-0123456789"
    # A value the environment sets wins over the file's.
    monkeypatch.setenv("PREFECT_API_URL", "http://elsewhere:4200/api")
    assert export_client_settings(settings, prefect_api_url=True) == []
    assert os.environ["PREFECT_API_URL"] == "http://elsewhere:4200/api"
    line = "login stagetune:prefect-token-0123456789 and mlflow-password-0123456789"
    assert mask_text(line, known_secrets()) == "login *** and ***"
    monkeypatch.delenv(SETTINGS_FILE_VARIABLE)
    assert mask_text(line, known_secrets()) == "login *** and ***"  # from the environment's names alone


def test_urls_are_redacted_and_postgres_urls_checked() -> None:
    assert redact_url("postgresql+psycopg://me:pw@db:5432/x") == "postgresql+psycopg://me:***@db:5432/x"
    assert redact_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    target = parse_postgres_url("postgresql+psycopg://postgres@127.0.0.1/stagetune_mlflow", "f")
    assert (target.host, target.port, target.user, target.database) == (
        "127.0.0.1",
        5432,
        "postgres",
        "stagetune_mlflow",
    )
    with pytest.raises(InputError) as caught:
        parse_postgres_url("postgresql+psycopg://me:pw@db:5432/", "--backend-store-uri")
    assert caught.value.field == "--backend-store-uri"
    assert "pw" not in caught.value.message


def test_the_state_folder_comes_from_the_environment_and_never_sits_in_a_checkout(tmp_path: Path) -> None:
    assert resolve_paths(environ={"STAGETUNE_STACK_DIR": str(tmp_path)}).root == tmp_path.resolve()
    assert resolve_paths(tmp_path / "x", environ={}).root == (tmp_path / "x").resolve()
    assert resolve_paths(environ={}).root == (Path.home() / ".local/state/stagetune/stack").resolve()
    with pytest.raises(InputError) as caught:
        resolve_paths(environ={"STAGETUNE_STACK_DIR": str(REPO / "stack-state")})
    assert caught.value.field == "STAGETUNE_STACK_DIR"
    assert not (REPO / "stack-state").exists()


def test_stop_pid_ends_a_process_group_and_kills_one_that_ignores_sigterm(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('deaf', flush=True); time.sleep(60)"
    )
    record = start_process(paths, "stubborn", [sys.executable, "-c", stubborn], {}, port=1, url="-", marker="SIG_IGN")
    assert read_record(paths, "stubborn") == record
    assert is_running(record)
    deadline = time.monotonic() + 20
    while "deaf" not in paths.log_file("stubborn").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)  # SIGTERM is ignored from here on: only the SIGKILL after the timeout ends it
    started = time.monotonic()
    assert stop_pid(record.pid, timeout_s=0.5)
    assert time.monotonic() - started >= 0.5
    assert not is_running(record)
    assert not stop_pid(record.pid)  # nothing left to stop
    forget(paths, "stubborn")
    assert read_record(paths, "stubborn") is None
    assert "starting stubborn" in paths.log_file("stubborn").read_text()


def test_stores_left_out_keep_the_previous_up_s_values(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    first = resolve_stores(paths, StackOptions())
    assert first == Stores(f"sqlite:///{paths.mlflow_db}", "stagetune", None)
    chosen = StackOptions(backend_store_uri="postgresql+psycopg://u:pw@127.0.0.1/m", optuna_storage="sqlite:///o.db")
    save_stores(paths, resolve_stores(paths, chosen))
    assert stat.S_IMODE((paths.root / "options.json").stat().st_mode) == 0o600
    again = resolve_stores(paths, StackOptions(bucket="other"))
    assert again == Stores("postgresql+psycopg://u:pw@127.0.0.1/m", "other", "sqlite:///o.db")


def test_a_reused_pid_is_not_taken_for_the_service() -> None:
    import os

    record = ProcessRecord("seaweed", os.getpid(), 1, "-", marker="weed-not-this-process", started_at=0.0)
    assert not is_running(record)
