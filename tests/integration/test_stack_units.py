"""The stack's plain functions without servers: settings file, credentials, URLs, state folder, PIDs."""

import json
import stat
import sys
import time
from pathlib import Path

import pytest

from stagetune.errors import InputError
from stagetune.settings import SETTINGS_FILE_VARIABLE, load_settings
from stagetune.stack import StackPaths, is_running, load_or_create_credentials, redact_url, resolve_paths, stop_pid
from stagetune.stack.envfile import format_env, read_env_file, write_env_file
from stagetune.stack.paths import prepare_state
from stagetune.stack.plan import StackOptions, Stores, resolve_stores, save_stores
from stagetune.stack.postgres import parse_postgres_url
from stagetune.stack.procs import ProcessRecord, forget, read_record, start_process
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
