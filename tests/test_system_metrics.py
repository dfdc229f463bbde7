"""System metrics: MLflow's readings on trial runs (shared sampler) and on the final run (MLflow's monitor)."""

import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from stagetune.tracking.system_metrics import SystemSampler, monitored_run, read_system

CPU = "system/cpu_utilization_percentage"
MEMORY = "system/system_memory_usage_megabytes"


def test_a_reading_holds_cpu_and_memory_under_mlflow_names() -> None:
    reading = read_system()
    assert {CPU, MEMORY, "system/system_memory_usage_percentage"} <= set(reading)
    assert 0 <= reading[CPU] <= 100
    assert reading[MEMORY] > 0


def test_a_trial_gets_the_readings_of_its_window_or_one_taken_at_its_end() -> None:
    sampler = SystemSampler(interval=0.05)
    try:
        started = time.time()
        time.sleep(0.3)
        rows = sampler.rows(started, time.time())
        steps = sorted({step for name, _, step in rows if name == CPU})
        assert len(steps) >= 2
        assert steps == list(range(len(steps)))
        # A window with no reading (a trial shorter than the interval): one reading, taken now.
        short = sampler.rows(time.time() + 10, time.time() + 11)
        assert sorted(name for name, _, _ in short if name.startswith("system/cpu")) == [CPU]
        assert {step for _, _, step in short} == {0}
    finally:
        sampler.stop()


def test_a_run_shorter_than_the_interval_still_gets_its_readings(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("t")).info.run_id
    with monitored_run(uri, run_id, interval=60):
        time.sleep(0.1)
    metrics = client.get_run(run_id).data.metrics
    assert {CPU, MEMORY} <= set(metrics)
    assert [m.step for m in client.get_metric_history(run_id, CPU)] == [0]
