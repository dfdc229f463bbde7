"""Trial task runners: thread pool or Dask, GPU annotations, and trials that report from worker processes."""

import os
import pickle
from collections import Counter
from pathlib import Path
from typing import Any, cast

import dask
import optuna
import pytest
from distributed import Client, LocalCluster
from mlflow.tracking import MlflowClient
from prefect import flow, task
from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from flows import runners
from flows.runners import (
    gpu_cluster_kwargs,
    local_cluster_kwargs,
    make_task_runner,
    require_configured_runner,
    trial_resources,
)
from flows.tune_pipeline import configured_pipeline, tune_pipeline
from schemas.config import ExecutionConfig
from schemas.pipeline import PipelineResult
from schemas.urls import default_storage_url
from stagetune.errors import InputError
from stagetune.search.pruning_reporter import pruning_reporter
from stagetune.search.study import make_pruner, open_storage
from tests.conftest import tiny_config

# The stages' runs without their slowest parts: this checks where trials run, not how well.
QUICK = ("sanity.lr_range_test=false", "sanity.baseline_epochs=0", "final.max_epochs=1", "tracking.trial_plots=false")
# Tags that exist only for some outcomes (a reason for pruned/failed trials, importances not computed).
_CONDITIONAL_TAGS = {"stagetune.reason", "stagetune.importances"}


def test_threads_are_the_default() -> None:
    runner = make_task_runner(ExecutionConfig())
    assert isinstance(runner, ThreadPoolTaskRunner)


def test_the_flow_runs_as_defined_on_threads_and_with_the_dask_runner_when_asked() -> None:
    assert configured_pipeline(ExecutionConfig()) is tune_pipeline  # not rebuilt per run
    assert isinstance(tune_pipeline.task_runner, ThreadPoolTaskRunner)
    on_dask = configured_pipeline(ExecutionConfig(task_runner="dask", dask_workers=2))
    assert on_dask is not tune_pipeline
    assert isinstance(on_dask.task_runner, DaskTaskRunner)
    assert on_dask.fn is tune_pipeline.fn


def test_dask_without_address_starts_a_loopback_local_cluster_of_single_threaded_processes() -> None:
    runner = make_task_runner(ExecutionConfig(task_runner="dask", dask_workers=3))
    assert isinstance(runner, DaskTaskRunner)
    assert runner.cluster_class == "distributed.LocalCluster"
    assert runner.cluster_kwargs == {
        "n_workers": 3,
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": None,
    }
    assert runner.address is None


def test_dask_with_an_address_connects_to_that_scheduler() -> None:
    runner = make_task_runner(ExecutionConfig(task_runner="dask", dask_address="tcp://10.0.0.5:8786"))
    assert isinstance(runner, DaskTaskRunner)
    assert runner.address == "tcp://10.0.0.5:8786"
    assert runner.cluster_kwargs == {}


def test_gpu_workers_each_own_whole_trials_worth_of_gpus() -> None:
    execution = ExecutionConfig(task_runner="dask", dask_workers=8, gpus_per_trial=2)
    assert gpu_cluster_kwargs(execution, gpu_count=5) == {"n_workers": 2, "gpus_per_worker": 2}
    small = ExecutionConfig(task_runner="dask", dask_workers=1, gpus_per_trial=1)
    assert gpu_cluster_kwargs(small, gpu_count=4) == {"n_workers": 1, "gpus_per_worker": 1}


def test_dask_with_gpus_per_trial_starts_the_gpu_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runners, "_cuda_device_count", lambda: 2)
    runner = make_task_runner(ExecutionConfig(task_runner="dask", dask_workers=4, gpus_per_trial=1))
    assert isinstance(runner, DaskTaskRunner)
    assert runner.cluster_class == "flows.runners.local_gpu_cluster"
    assert runner.cluster_kwargs == {"n_workers": 2, "gpus_per_worker": 1}


def test_gpus_per_trial_without_enough_gpus_is_an_input_error() -> None:
    execution = ExecutionConfig(task_runner="dask", gpus_per_trial=2)
    with pytest.raises(InputError) as caught:
        gpu_cluster_kwargs(execution, gpu_count=1)
    assert caught.value.field == "execution.gpus_per_trial"
    assert "1 CUDA device" in caught.value.message


def test_gpus_per_trial_on_a_numbered_device_is_an_input_error() -> None:
    execution = ExecutionConfig(task_runner="dask", gpus_per_trial=1, device="cuda:1")
    with pytest.raises(InputError) as caught:
        gpu_cluster_kwargs(execution, gpu_count=2)
    assert caught.value.field == "execution.device"


@pytest.mark.parametrize(
    ("execution", "expected"),
    [
        (ExecutionConfig(task_runner="dask", gpus_per_trial=2), {"resources": {"GPU": 2}}),
        (ExecutionConfig(task_runner="dask"), {}),
        (ExecutionConfig(task_runner="threads", gpus_per_trial=1), {}),
    ],
)
def test_trial_submissions_are_annotated_only_for_gpu_trials_on_dask(
    execution: ExecutionConfig, expected: dict[str, Any]
) -> None:
    with trial_resources(execution):
        assert dask.get_annotations() == expected
    assert dask.get_annotations() == {}


@task
def _visible_devices() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_gpu_cluster_workers_own_their_devices_and_trials_carry_the_gpu_annotation() -> None:
    execution = ExecutionConfig(task_runner="dask", dask_workers=2, gpus_per_trial=1)
    runner = DaskTaskRunner(
        cluster_class="flows.runners.local_gpu_cluster", cluster_kwargs={"n_workers": 2, "gpus_per_worker": 1}
    )

    @flow(task_runner=runner)  # type: ignore[arg-type]
    def submit_trials() -> tuple[list[str], dict[str, Any], dict[str, Any]]:
        with trial_resources(execution):
            futures = [_visible_devices.submit() for _ in range(4)]
        results = [f.result() for f in futures]
        context = FlowRunContext.get()
        assert context is not None
        client = cast(DaskTaskRunner, context.task_runner).client
        restrictions = client.run_on_scheduler(_resource_restrictions)
        devices = client.run(_worker_devices)
        return results, restrictions, devices

    results, restrictions, devices = submit_trials()
    assert sorted(devices.values()) == ["0", "1"]  # one GPU per worker, each its own
    assert set(results) <= {"0", "1"}
    trial_restrictions = [r for key, r in restrictions.items() if "_visible_devices" in key]
    assert trial_restrictions == [{"GPU": 1}] * 4


def _resource_restrictions(dask_scheduler: Any) -> dict[str, Any]:
    return {str(key): state.resource_restrictions for key, state in dask_scheduler.tasks.items()}


def _worker_devices() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


@pytest.mark.parametrize("pattern", ["sqlite:///{}/optuna.db", "journal:///{}/optuna.journal"])
def test_a_pickled_reporter_carries_names_only_and_reports_to_the_same_study(tmp_path: Path, pattern: str) -> None:
    storage = pattern.format(tmp_path)
    study = optuna.create_study(study_name="s", storage=open_storage(storage), pruner=make_pruner("median", 5))
    for _ in range(4):  # four finished trials at loss 0.1 each epoch
        finished = study.ask()
        for epoch in range(3):
            finished.report(0.1, epoch)
        study.tell(finished, 0.1)
    trial = study.ask()
    payload = pickle.dumps(pruning_reporter(trial, storage))
    assert b"sqlalchemy" not in payload  # no study, storage or engine travels: the worker rebuilds the trial
    assert b"Journal" not in payload
    assert len(payload) < 2000

    report = pickle.loads(payload)
    assert [report(0, 5.0), report(1, 5.0)] == [False, True]  # warm-up epoch, then far worse than the median
    assert study.trials[-1].intermediate_values == {0: 5.0, 1: 5.0}
    assert b"sqlalchemy" not in pickle.dumps(report)  # still small once it has loaded its trial


def test_a_dask_config_on_a_thread_pool_flow_is_refused(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "execution.task_runner=dask")
    with pytest.raises(InputError) as caught:
        require_configured_runner(config.execution, ThreadPoolTaskRunner())
    assert caught.value.field == "execution.task_runner"
    require_configured_runner(config.execution, make_task_runner(config.execution))
    require_configured_runner(ExecutionConfig(), ThreadPoolTaskRunner())


def _tree_shape(result: PipelineResult) -> Counter[tuple[Any, ...]]:
    """Each run as (depth, stage, trial number, its stagetune tag names), counted."""
    runs = MlflowClient(result.tracking_uri).search_runs([result.mlflow_experiment_id], max_results=1000)
    parents = {r.info.run_id: r.data.tags.get("mlflow.parentRunId") for r in runs}

    def depth(run_id: str | None) -> int:
        return 0 if not parents.get(run_id or "") else 1 + depth(parents[run_id or ""])

    return Counter(
        (
            depth(run.info.run_id),
            run.data.tags.get("stagetune.stage", ""),
            run.data.tags.get("stagetune.trial", ""),
            tuple(sorted(k for k in run.data.tags if k.startswith("stagetune.") and k not in _CONDITIONAL_TAGS)),
        )
        for run in runs
    )


def _executed_tasks(dask_worker: Any) -> int:
    return int(dask_worker.state.executed_count)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_dask_local_cluster_records_the_same_mlflow_tree_as_the_thread_pool(tmp_path: Path) -> None:
    settings = (*QUICK, "execution.concurrency=2", "coarse.n_trials=4", "refine.n_trials=2")
    threads = tiny_config(tmp_path / "threads", *settings)
    on_dask = tiny_config(tmp_path / "dask", *settings, "execution.task_runner=dask", "execution.dask_workers=2")
    expected = tune_pipeline(threads)
    # The LocalCluster `make_task_runner` would start, started here so the test can ask its workers what they ran.
    with LocalCluster(**local_cluster_kwargs(on_dask.execution)) as cluster, Client(cluster) as client:
        execution = on_dask.execution.model_copy(update={"dask_address": cluster.scheduler_address})
        result = tune_pipeline.with_options(task_runner=make_task_runner(execution))(on_dask)
        executed = client.run(_executed_tasks)

    assert len(executed) == 2
    assert sum(executed.values()) == 4 + 2  # every trial ran in a worker process, nothing else did
    assert result.status == expected.status == "completed"
    shape = _tree_shape(result)
    assert shape == _tree_shape(expected)
    assert sum(n for (depth, *_), n in shape.items() if depth == 0) == 1
    stages = sorted(stage for (depth, stage, *_) in shape.elements() if depth == 1)
    assert stages == ["coarse", "final", "refine", "sample", "sanity"]
    trials = sorted((stage, int(n)) for (depth, stage, n, _) in shape.elements() if depth == 2)
    assert trials == [("coarse", i) for i in range(4)] + [("refine", i) for i in range(2)]
    # The trials reported every epoch to the flow's studies from the workers' processes.
    storage = open_storage(default_storage_url(Path(on_dask.execution.workdir).resolve()))  # the workdir's journal
    for stage in (result.coarse, result.refine):
        assert stage is not None
        expected_reports = {r.number: r.epochs_run for r in stage.trials if r.state != "FAIL"}
        study = optuna.load_study(study_name=stage.study_name, storage=storage)
        reported = {t.number: len(t.intermediate_values) for t in study.trials if t.number in expected_reports}
        assert reported == expected_reports, stage.stage
