"""`stagetune worker` processes sharing a pipeline's studies on PostgreSQL or on the default journal file:
an exact, shared budget."""

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import psycopg
import pytest
from mlflow.tracking import MlflowClient

from flows.tune_pipeline import tune_pipeline
from schemas.urls import default_storage_url
from stagetune.search.study import open_storage
from stagetune.stages.shared_study import WORKER_ID
from tests.conftest import REPO, TINY_OVERRIDES, subprocess_env, tiny_config, uses_a_server

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
@uses_a_server
def postgres_storage() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = f"stagetune_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(POSTGRES, autocommit=True)
    except psycopg.OperationalError as error:
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432: {error}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["postgresql", "journal"])
def shared_storage(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """The storage the pipeline and its workers share: PostgreSQL (several machines), or None for the
    default, the workdir's journal file (one machine; nothing to configure)."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_storage")
        return url
    return None


def test_two_workers_and_the_pipeline_share_an_exact_budget(tmp_path: Path, shared_storage: str | None) -> None:
    storage = shared_storage or default_storage_url(tmp_path)
    assert storage.startswith(("postgresql", "journal:///"))
    overrides = [
        *([f"search.storage={shared_storage}"] if shared_storage else []),
        "search.study_name=shared",
        "coarse.n_trials=12",
        "coarse.epochs=6",
        "refine.n_trials=6",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        # Training steps of 100 ms (bench.timed_model): the workers look for the study every 2 s, and tiny
        # real trials let a fast pipeline finish the coarse stage alone before they joined. The sanity gate
        # (a linear timed model, 100 ms a step) is not what this test is about.
        "model.family=custom",
        "model.import_path=bench.timed_model:sleep_100ms",
        "sanity.enabled=false",
    ]
    args = [f"execution.workdir={tmp_path}", *overrides]
    command = [sys.executable, "-m", "stagetune", "worker", "--study", "shared", "--wait", "120", "--verbose"]
    for override in (*TINY_OVERRIDES, *args):
        command += ["--set", override]
    env = subprocess_env(tmp_path)
    workers = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        _wait_for_worker_data(tmp_path, count=2)  # both workers are up and polling for the study
        result = tune_pipeline(tiny_config(tmp_path, *overrides))
        outputs = [w.communicate(timeout=300) for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert [w.returncode for w in workers] == [0, 0], [err[-3000:] for _, err in outputs]
    assert result.status == "completed"

    for stage, budget in (("coarse", 12), ("refine", 6)):
        study = optuna.load_study(study_name=f"shared-{stage}", storage=open_storage(storage))
        trials = study.get_trials()
        assert sorted(t.number for t in trials) == list(range(budget))  # exact, no duplicates, none lost
        assert all(t.state.is_finished() for t in trials)
        stage_result = getattr(result, stage)
        assert [r.number for r in stage_result.trials] == list(range(budget))
    coarse_study = optuna.load_study(study_name="shared-coarse", storage=open_storage(storage))
    runners = {t.user_attrs["worker"] for t in coarse_study.get_trials()}
    assert len(runners - {WORKER_ID}) >= 1, "no trial ran in a worker process"

    client = MlflowClient(result.tracking_uri)
    assert result.coarse is not None
    trial_runs = client.search_runs(
        [result.mlflow_experiment_id], f"tags.mlflow.parentRunId = '{result.coarse.mlflow_run_id}'"
    )
    assert len(trial_runs) == 12


def _wait_for_worker_data(workdir: Path, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while len(list(workdir.glob("workers/*/sample-*.npz"))) < count:
        assert time.monotonic() < deadline, "workers did not prepare their data in time"
        time.sleep(0.2)


def test_worker_refuses_different_data(tmp_path: Path, postgres_storage: str) -> None:
    overrides = [f"search.storage={postgres_storage}", "search.study_name=other"]
    result = tune_pipeline(tiny_config(tmp_path, *overrides, "refine.n_trials=0", "refine.warm_start=0"))
    assert result.status == "completed"
    command = [sys.executable, "-m", "stagetune", "worker", "--study", "other", "--wait", "5"]
    for override in (*TINY_OVERRIDES, f"execution.workdir={tmp_path}", *overrides, "seed=7"):
        command += ["--set", override]
    done = subprocess.run(command, cwd=REPO, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "differ from the study's" in done.stderr
