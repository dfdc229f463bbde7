"""The pipeline with the MLflow backend store and the Optuna studies on PostgreSQL (127.0.0.1:5432).

A fresh pair of databases per session, dropped afterwards. The URLs carry a password: trust auth
ignores it here, so it stands for a real one that must never reach MLflow or the logs.
"""

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import psycopg
import pytest

from stagetune.stack import drop_database, ensure_database, redact_url, stack_down
from stagetune.stack.postgres import parse_postgres_url
from tests.conftest import uses_a_server
from tests.integration.conftest import PipelineRun, PrefectApi, run_pipeline, start_stack
from tests.integration.helpers import (
    all_runs,
    bucket_objects,
    files_under,
    leaks,
    mlflow_blobs,
    referenced_artifacts,
    stack_client,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass(frozen=True)
class PostgresRun:
    run: PipelineRun
    mlflow_url: str
    optuna_url: str
    password: str


@pytest.fixture(scope="module")
@uses_a_server
def postgres_run(scratch: Path, prefect_api: PrefectApi) -> Iterator[PostgresRun]:
    suffix, password = secrets.token_hex(4), "pw" + secrets.token_hex(10)
    base = f"postgresql+psycopg://postgres:{password}@127.0.0.1:5432/stagetune_it"
    mlflow_url, optuna_url = f"{base}_mlflow_{suffix}", f"{base}_optuna_{suffix}"
    stack = None
    try:
        assert ensure_database(mlflow_url)  # a fresh one
        assert ensure_database(optuna_url)
        stack = start_stack(scratch / "pg-stack", backend_store_uri=mlflow_url, optuna_storage=optuna_url)
        run = run_pipeline(stack, scratch / "pg-pipeline", prefect_api)
        yield PostgresRun(run, mlflow_url, optuna_url, password)
    finally:
        if stack is not None:
            stack_down(stack.paths)
        drop_database(mlflow_url)
        drop_database(optuna_url)


def _query(url: str, statement: str, *args: object) -> list[tuple[object, ...]]:
    with psycopg.connect(**parse_postgres_url(url, "url").connect_kwargs()) as conn:
        return conn.execute(statement, args).fetchall()


def test_runs_and_trials_are_stored_in_postgres(postgres_run: PostgresRun) -> None:
    result = postgres_run.run.result
    assert result.status == "completed"
    client = stack_client(postgres_run.run.stack)
    runs = all_runs(client, result.mlflow_experiment_id)
    statement = "SELECT run_uuid FROM runs WHERE experiment_id = %s"
    rows = _query(postgres_run.mlflow_url, statement, result.mlflow_experiment_id)
    assert {row[0] for row in rows} == {run.info.run_id for run in runs}
    registered = result.registered_model
    assert registered is not None
    versions = _query(postgres_run.mlflow_url, "SELECT name, version FROM model_versions")
    assert (registered.name, registered.version) in versions

    coarse, refine = result.coarse, result.refine
    assert coarse is not None
    assert refine is not None
    studies = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(postgres_run.optuna_url)}
    assert studies == {coarse.study_name: len(coarse.trials), refine.study_name: len(refine.trials)}
    # Nothing fell back to the local SQLite stores.
    workdir = postgres_run.run.workdir
    assert not (workdir / "optuna.db").exists()
    assert not (workdir / "optuna.journal").exists()
    assert not (workdir / "mlflow.db").exists()


def test_every_artifact_is_in_the_bucket_with_a_postgres_backend(postgres_run: PostgresRun) -> None:
    result = postgres_run.run.result
    referenced = referenced_artifacts(stack_client(postgres_run.run.stack), result.mlflow_experiment_id)
    objects = bucket_objects(postgres_run.run.stack)
    assert referenced
    assert {key: objects.get(key) for key in referenced} == referenced


def test_the_database_password_and_s3_keys_never_leak(postgres_run: PostgresRun, tmp_path: Path) -> None:
    run = postgres_run.run
    client = stack_client(run.stack)
    blobs = mlflow_blobs(client, run.result.mlflow_experiment_id, tmp_path)
    blobs |= files_under(run.stack.paths.logs, "stack log")
    blobs |= files_under(run.stack.paths.pids, "stack record")
    blobs |= files_under(run.workdir, "pipeline workdir")
    blobs["python log records"] = "\n".join(run.log_records).encode()
    assert not leaks((postgres_run.password, *run.stack.credentials.values(), *run.stack.auth.values()), blobs)
    mlflow_record = run.stack.service("mlflow")
    assert mlflow_record.details["backend_store"] == redact_url(postgres_run.mlflow_url)
    assert postgres_run.password not in mlflow_record.details["backend_store"]
