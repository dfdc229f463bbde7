"""The whole pipeline against the local stack: every artifact MLflow references is an object in S3."""

import json
from pathlib import Path

import pytest

from tests.integration.conftest import PipelineRun
from tests.integration.helpers import (
    all_runs,
    artifact_key,
    bucket_objects,
    files_under,
    leaks,
    mlflow_blobs,
    prefect_query,
    referenced_artifacts,
    stack_client,
    walk_artifacts,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_every_artifact_of_every_run_is_an_object_in_the_bucket(pipeline_run: PipelineRun) -> None:
    result = pipeline_run.result
    assert result.status == "completed"
    # The flow ran on the stack's own Prefect server.
    flow_runs = prefect_query(pipeline_run.stack, "flow_runs/filter")
    assert (result.name, "COMPLETED") in {(run["name"], run["state_type"]) for run in flow_runs}
    assert result.tracking_uri == pipeline_run.stack.service("mlflow").url
    client = stack_client(pipeline_run.stack)
    experiment = client.get_experiment(result.mlflow_experiment_id)
    # Proxied through the server: the client never talks to S3 and needs no keys.
    assert experiment.artifact_location.startswith("mlflow-artifacts:")

    objects = bucket_objects(pipeline_run.stack)
    runs = all_runs(client, result.mlflow_experiment_id)
    assert len(runs) >= 1 + 5 + 3 + 2  # parent, five stages, the trials
    referenced = referenced_artifacts(client, result.mlflow_experiment_id)
    assert len(referenced) >= 20
    missing = sorted(set(referenced) - set(objects))
    assert not missing, missing
    assert {key: objects[key] for key in referenced} == referenced  # same sizes


def test_the_registered_model_version_is_stored_in_the_bucket(pipeline_run: PipelineRun) -> None:
    registered = pipeline_run.result.registered_model
    assert registered is not None
    client = stack_client(pipeline_run.stack)
    version = client.get_model_version(registered.name, str(registered.version))
    assert version.run_id is not None
    assert version.source.startswith("models:/m-")  # MLflow 3's logged model, a pyfunc
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    prefix = artifact_key(logged.artifact_location) + "/"
    stored = {key.removeprefix(prefix) for key in bucket_objects(pipeline_run.stack) if key.startswith(prefix)}
    assert {"MLmodel", "model_code.py", "artifacts/checkpoint.pt"} <= stored
    assert any(key.startswith("artifacts/") and key.endswith(".preprocess.json") for key in stored)
    run_files = {path for path, _ in walk_artifacts(client, version.run_id, "checkpoint")}
    assert run_files == {"checkpoint/checkpoint.pt"}  # the final run's own copy of the weights


def test_no_secret_reaches_mlflow_logs_or_command_lines(pipeline_run: PipelineRun, tmp_path: Path) -> None:
    stack = pipeline_run.stack
    secrets = (*stack.credentials.values(), *stack.auth.values())
    client = stack_client(pipeline_run.stack)
    blobs = mlflow_blobs(client, pipeline_run.result.mlflow_experiment_id, tmp_path)
    assert any("pipeline_config.json" in name for name in blobs)  # the walk did download the artifacts
    blobs |= files_under(stack.paths.logs, "stack log")
    blobs |= files_under(pipeline_run.workdir, "pipeline workdir")
    blobs["python log records"] = "\n".join(pipeline_run.log_records).encode()
    prefect_logs = prefect_query(pipeline_run.stack, "logs/filter", {"limit": 200})
    blobs["prefect logs"] = json.dumps(prefect_logs).encode()
    for service in stack.services:
        blobs[f"{service.service} command line"] = Path(f"/proc/{service.pid}/cmdline").read_bytes()
    assert not leaks(secrets, blobs)
    # The check itself can fail: the settings file does hold the secret.
    assert leaks(secrets, {"stack.env": stack.paths.env_file.read_bytes()}) == ["stack.env"]
