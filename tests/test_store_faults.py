"""Store faults fail fast and clearly: a read-only MLflow store at the start (exit 2, seconds, nothing
written) or mid-run (StoreError at once, one paragraph, no traceback); file:// tracking URIs refused.

The tests run as root here, and root writes through any permission bits. The child processes are
therefore started without the capabilities that let root do so (`setpriv` drops CAP_DAC_OVERRIDE,
CAP_DAC_READ_SEARCH and CAP_FOWNER from its bounding set): they stay uid 0, own their files, and
a file or folder chmod'ed read-only is then refused by the kernel exactly as for any user. No
mount, loop device or second user is needed. As a non-root user the commands run as they are.
"""

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from stagetune.config_loading import load_config
from stagetune.errors import InputError
from stagetune.settings import load_settings
from stagetune.store_check import check_stores_writable
from tests.conftest import REPO, subprocess_env

DROPPED = "-dac_override,-dac_read_search,-fowner"


def unprivileged(command: list[str]) -> list[str]:
    """`command` run so that file permissions bind it (as root: without the capabilities that bypass them)."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permission bits cannot be made to bind")
    return [setpriv, f"--bounding-set={DROPPED}", f"--inh-caps={DROPPED}", *command]


def make_database(folder: Path) -> str:
    """A SQLite database with an (empty) runs table, as an MLflow store has: cheaper than a real store,
    and all the start-up check looks at is whether it can be written."""
    with sqlite3.connect(folder / "mlflow.db") as connection:
        connection.execute("CREATE TABLE runs (run_uuid TEXT)")
    return f"sqlite:///{folder / 'mlflow.db'}"


def runs_in(database: Path) -> int:
    with sqlite3.connect(database) as connection:
        return int(connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0])


@pytest.mark.slow
@pytest.mark.parametrize("case", ["read-only database file", "new database in a read-only folder"])
def test_a_read_only_tracking_store_is_refused_in_seconds_before_anything_is_written(tmp_path: Path, case: str) -> None:
    store = tmp_path / "store"
    store.mkdir()
    uri = make_database(store)
    if case == "read-only database file":
        (store / "mlflow.db").chmod(0o444)
    else:
        uri = f"sqlite:///{store / 'new.db'}"
    store.chmod(0o555)
    workdir = tmp_path / "work"
    command = [sys.executable, "-m", "stagetune", "run", "--set", f"tracking.uri={uri}"]
    command += ["--set", f"execution.workdir={workdir}"]
    try:
        # Refused before Prefect or MLflow start: a run that retried the store instead would hold MLflow's
        # retry window (minutes) and the timeout would fail the test.
        done = subprocess.run(
            unprivileged(command),
            cwd=tmp_path,
            env=subprocess_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        store.chmod(0o755)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error in tracking.uri: ")
    assert "cannot be written" in lines[0]
    assert "write permission" in lines[0]
    assert "Traceback" not in done.stderr
    assert not workdir.exists() or not any(workdir.rglob("*"))  # no run folder, no Optuna study
    assert runs_in(store / "mlflow.db") == 0
    assert not (store / "new.db").exists()


MID_RUN = """
import sys
from pathlib import Path
from stagetune.runtime import configure_process
configure_process()
from stagetune.errors import StoreError
from stagetune.tracking.io_retry import RetryingClient
from stagetune.tracking.run_tree import ensure_experiment, log_metrics

folder = Path(sys.argv[1])
client = RetryingClient(f"sqlite:///{folder / 'mlflow.db'}", retry_seconds=600)
experiment = ensure_experiment(client, "t", (folder / "artifacts").as_uri())
run_id = client.create_run(experiment).info.run_id
log_metrics(client, run_id, [("loss", 1.0, 0)])
(folder / "mlflow.db").chmod(0o444)  # the store turns read-only while the run is going
folder.chmod(0o555)
try:
    log_metrics(client, run_id, [("loss", 0.5, 1)])
except StoreError as error:
    print(error)
"""


@pytest.mark.slow
def test_a_store_turning_read_only_mid_run_stops_at_once_with_one_paragraph(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    script = tmp_path / "mid_run.py"
    script.write_text(MID_RUN, encoding="utf-8")
    env = subprocess_env(tmp_path)
    try:
        done = subprocess.run(
            unprivileged([sys.executable, str(script), str(folder)]),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,  # a retried call would hold its 600 s window: not retried, or the test times out
        )
    finally:
        folder.chmod(0o755)
    assert done.returncode == 0, done.stderr
    message = done.stdout.strip()
    assert message.startswith(f"the MLflow store sqlite:///{folder / 'mlflow.db'} failed permanently (read-only)")
    assert "attempt to write a readonly database" in message
    assert "make the store writable" in message
    assert "Traceback" not in done.stderr
    assert not done.stderr.strip(), done.stderr


def test_the_store_check_writes_nothing_and_refuses_a_database_path_that_is_a_folder(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    uri = make_database(store)
    before = sorted(p.name for p in store.iterdir())
    config = load_config(None, [f"tracking.uri={uri}", f"execution.workdir={tmp_path / 'work'}"])
    target = check_stores_writable(config)  # writable: passes, and says where the run's records go
    assert target.tracking_uri == uri
    assert target.artifact_location == (store / "mlartifacts").as_uri()
    assert sorted(p.name for p in store.iterdir()) == before
    assert not (tmp_path / "work").exists()
    with sqlite3.connect(store / "mlflow.db") as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert "_stagetune_write_probe" not in tables  # the probe's write was rolled back
    folder_config = load_config(None, [f"tracking.uri=sqlite:///{store}", f"execution.workdir={tmp_path / 'work'}"])
    with pytest.raises(InputError) as caught:
        check_stores_writable(folder_config)
    assert caught.value.field == "tracking.uri"
    assert "is a folder" in caught.value.message


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "file:mlruns", "FILE:///srv/mlruns"])
def test_file_tracking_uris_are_refused_with_the_fix(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError) as caught:
        load_config(None, [f"tracking.uri={uri}"])
    assert caught.value.field == "tracking.uri"
    assert "file://" in caught.value.message
    assert "sqlite:///" in caught.value.message
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(InputError) as from_environment:
        load_settings()
    assert from_environment.value.field == "MLFLOW_TRACKING_URI"
    assert "sqlite:///path/mlflow.db" in from_environment.value.message


def test_prefect_does_not_retry_closing_the_run_on_a_permanent_store_fault() -> None:
    from prefect.states import Failed

    from stagetune.errors import StoreError
    from tasks.tracking import close_tracking

    retry = close_tracking.retry_condition_fn
    assert retry is not None
    # Prefect hands the condition a Failed state whose data is the exception the task raised.
    assert retry(close_tracking, None, Failed(data=StoreError("read-only"))) is False
    assert retry(close_tracking, None, Failed(data=ConnectionResetError())) is True
