"""Fault tests: the stack's S3 endpoint, or its MLflow server, stopped for a while mid-run, then restarted.

S3 (SeaweedFS) down ~30 s during the refinement stage: the pipeline runs as `stagetune run` in a
child process against a stack of its own. While S3 is down, the MLflow server's artifact proxy
answers an upload with HTTP 500 (after its own boto3 retries, ~3-8 s) and drops the connection;
the pipeline's retrying client waits that out, so the run completes, every artifact MLflow lists
is an object of the bucket, and every artifact the pipeline uploads is listed.

The MLflow server stopped 10 s, then restarted (~10-20 s more): a client logging runs, metrics and
artifacts in a loop rides it out, and the runs it created meanwhile are neither lost nor doubled.
"""

import json
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from stagetune.stack import MLFLOW, SEAWEED, StackInfo, StackOptions, stack_down, stack_up
from stagetune.tracking.io_retry import MLFLOW_HTTP_ENV, RetryingClient
from stagetune.tracking.run_tree import STAGE_TAG, TRIAL_TAG, end_run, log_metrics
from tests.conftest import TINY_OVERRIDES, subprocess_env, uses_a_server
from tests.integration.conftest import start_stack
from tests.integration.helpers import (
    FOREIGN_SETTINGS,
    all_runs,
    artifact_key,
    bucket_objects,
    referenced_artifacts,
    stack_client,
    stop_service,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_S = 30.0
MLFLOW_OUTAGE_S = 10.0  # stopped for this long; its restart adds ~10-20 s
EXPERIMENT = "fault-s3"
PARENT_ARTIFACTS = ("config/pipeline_config.json", "results/pipeline.json")
# Enough refinement trials that the stage outlasts the outage; each trial uploads a learning-curve PNG.
FAULT_OVERRIDES = (
    f"tracking.experiment={EXPERIMENT}",
    "tracking.trial_plots=true",
    "coarse.n_trials=3",
    "refine.n_trials=8",
    "refine.warm_start=1",
    "refine.pruner=none",
    "final.max_epochs=2",
)


@pytest.fixture(scope="module")
@uses_a_server
def fault_stack(scratch: Path) -> Iterator[StackInfo]:
    """A stack of its own: stopping its S3 must not disturb the session's stack."""
    info = start_stack(scratch / "fault-stack", prefect=True)
    yield info
    stack_down(info.paths)


def _start_pipeline(stack: StackInfo, workdir: Path, log: Path) -> subprocess.Popen[bytes]:
    overrides = (*TINY_OVERRIDES, *FAULT_OVERRIDES, f"execution.workdir={workdir}")
    args = [arg for override in overrides for arg in ("--set", override)]
    env = subprocess_env(
        workdir,
        STAGETUNE_SETTINGS_FILE=stack.paths.env_file,
        PREFECT_API_URL=stack.settings["PREFECT_API_URL"],
        # Shows the pipeline's warnings (Prefect's console handler is quiet by default in the CLI).
        PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING",
        **MLFLOW_HTTP_ENV,
    )
    for name in FOREIGN_SETTINGS:
        env.pop(name, None)
    command = [sys.executable, "-m", "stagetune", "run", *args, "--summary", str(workdir / "summary.json")]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)


def _refine_trial(client: MlflowClient, process: subprocess.Popen[bytes], log: Path) -> Run | None:
    """The first refinement trial run, once it exists (None before; fails if the pipeline ended)."""
    assert process.poll() is None, f"the pipeline ended before the refinement: {log.read_text()[-3000:]}"
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], f"tags.`{STAGE_TAG}` = 'refine'")
    return next((run for run in runs if TRIAL_TAG in run.data.tags), None)


def test_s3_down_for_30_s_during_refinement_fails_nothing_and_loses_no_artifact(
    fault_stack: StackInfo, tmp_path: Path
) -> None:
    client = stack_client(fault_stack)
    log = tmp_path / "pipeline.log"
    started = time.monotonic()
    process = _start_pipeline(fault_stack, tmp_path, log)
    try:
        wait_for(lambda: _refine_trial(client, process, log), 150, "refinement trial run")
        to_refine = time.monotonic() - started
        stopping = time.time()  # S3 goes down from here (SIGTERM); gone for certain once stop_service returns
        stop_service(fault_stack, SEAWEED)
        time.sleep(max(0.0, stopping + OUTAGE_S - 5 - time.time()))
        probe = time.monotonic()
        client.get_experiment_by_name(EXPERIMENT)  # the tracking server itself still answers
        probe_seconds = time.monotonic() - probe
        time.sleep(max(0.0, stopping + OUTAGE_S - time.time()))
        during_outage = log.read_text()
        stack_up(fault_stack.paths, StackOptions(timeout_s=60))  # restarts SeaweedFS: same data folder, same port
        outage = time.time() - stopping
        back = time.monotonic()
        code = process.wait(timeout=150)
        after = time.monotonic() - back
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    seconds = time.monotonic() - started
    output = log.read_text()
    assert code == 0, output[-5000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed"

    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = all_runs(client, experiment.experiment_id)
    trials = [run for run in runs if TRIAL_TAG in run.data.tags]
    stage_runs = {run.data.tags[STAGE_TAG]: run for run in runs if STAGE_TAG in run.data.tags and run not in trials}
    assert set(stage_runs) == {"sample", "sanity", "coarse", "refine", "final"}
    assert len(trials) == 3 + 8
    for run in runs:  # FAILED only where the trial itself failed
        failed_trial = run.info.status == "FAILED" and run.data.tags.get("stagetune.state") == "FAIL"
        assert run.info.status == "FINISHED" or failed_trial, (run.info.run_name, run.info.status)

    # Every artifact of every run (parent, stages, trials) is an object of the bucket, of the same size.
    referenced = referenced_artifacts(client, experiment.experiment_id)
    objects = bucket_objects(fault_stack)
    missing = sorted(set(referenced) - set(objects))
    assert not missing, missing
    assert {key: objects[key] for key in referenced} == referenced
    # ... and every artifact the pipeline means to upload is there (a lost upload would not be listed).
    parent = client.get_run(summary["mlflow_parent_run_id"])
    expected = [artifact_key(parent.info.artifact_uri, name) for name in PARENT_ARTIFACTS]
    expected += [artifact_key(run.info.artifact_uri, f"results/{stage}.json") for stage, run in stage_runs.items()]
    expected += [
        artifact_key(run.info.artifact_uri, "plots/learning_curve.svg")
        for run in trials
        if "train/loss" in run.data.metrics  # a trial that failed before its first epoch has no curve
    ]
    missing_expected = sorted(set(expected) - set(referenced))
    assert not missing_expected, missing_expected

    # The outage was really met: an upload was tried while S3 was down, and retried (the warning was
    # printed before S3 came back); it then went through, as the expected artifacts above show.
    refine = stage_runs["refine"]
    refine_seconds = (refine.info.end_time - refine.info.start_time) / 1000
    print(
        f"S3 down {outage:.1f} s during a {refine_seconds:.0f} s refinement (MLflow's REST API answered in "
        f"{probe_seconds:.1f} s meanwhile); {len(referenced)} artifacts of {len(runs)} runs verified in the bucket; "
        f"pipeline {seconds:.0f} s ({to_refine:.0f} s to the refinement, {after:.0f} s after S3 was back)"
    )
    assert re.search(r"MLflow unreachable \(.+\), retrying log_(figure|artifact|text|dict)", during_outage), output


def test_mlflow_server_down_and_restarted_loses_and_doubles_no_run(
    fault_stack: StackInfo, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name, value in MLFLOW_HTTP_ENV.items():
        monkeypatch.setenv(name, value)
    stack_client(fault_stack)  # puts the stack's MLflow login into the environment
    client = RetryingClient(fault_stack.service("mlflow").url, retry_seconds=120)
    experiment_id = client.create_experiment("fault-mlflow")
    spans: list[tuple[float, float]] = []  # (start, end) of each logging round
    errors: list[BaseException] = []
    enough = threading.Event()

    def log_runs() -> None:
        try:
            while not enough.is_set():
                started = time.time()
                number = len(spans)
                run_id = client.create_run(experiment_id, run_name=f"round-{number}").info.run_id
                log_metrics(client, run_id, [("round", number, 0)])
                client.log_text(run_id, str(number), "round.txt")
                end_run(client, run_id)
                spans.append((started, time.time()))
                time.sleep(0.2)
        except BaseException as error:  # handed to the test thread
            errors.append(error)

    worker = threading.Thread(target=log_runs)
    with caplog.at_level(logging.WARNING, logger="stagetune.tracking.io_retry"):
        worker.start()
        wait_for(lambda: len(spans) >= 3 or errors, 60, "three rounds before the outage")
        stopping = time.time()
        stop_service(fault_stack, MLFLOW)
        time.sleep(max(0.0, stopping + MLFLOW_OUTAGE_S - time.time()))
        stack_up(fault_stack.paths, StackOptions(timeout_s=90))  # same port, same backend store
        back = time.time()
        rounds = len(spans)
        wait_for(lambda: len(spans) >= rounds + 3 or errors, 60, "three rounds after the outage")
        enough.set()
        worker.join(timeout=150)
    assert not errors, errors
    assert any(start < back and end > back for start, end in spans)  # a round waited for the server
    runs = client.search_runs([experiment_id], max_results=1000)
    assert sorted(run.info.run_name for run in runs) == sorted(f"round-{n}" for n in range(len(spans)))
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.metrics["round"] == float(run.info.run_name.removeprefix("round-"))
        assert [item.path for item in client.list_artifacts(run.info.run_id)] == ["round.txt"]
    warnings = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("MLflow unreachable (") for message in warnings), warnings
    print(f"MLflow server down {back - stopping:.1f} s; {len(spans)} rounds logged, none lost or doubled")
