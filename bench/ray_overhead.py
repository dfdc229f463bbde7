"""The overhead benchmark's trials through Ray Tune: same timed model, data, epochs and trial count, one trial
at a time, MLflow logging through Ray's own `MLflowLoggerCallback`; at Ray's defaults and with actor reuse."""

import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.datasets import BUILTIN_SPECS, prepare_data
from bench.overhead import Measurement, Store, Workload, overhead_config
from bench.ray_peers import start_ray
from bench.space import hyperparams_from, ray_param_space
from bench.timed_model import LEDGER
from bench.training import objective_value, train_search_trial
from schemas.results import EpochRecord


def timed_trainable(config: dict[str, Any], data: Any, epochs: int) -> None:
    """One trial: the pipeline's trial training, reporting each epoch and the training seconds so far."""
    from ray import tune

    started = LEDGER.total()

    def on_epoch(record: EpochRecord) -> None:
        tune.report({"objective": objective_value(record, "val_loss"), "train_seconds": LEDGER.total() - started})

    train_search_trial(data, hyperparams_from(config), epochs, 0, on_epoch)


def measure_ray(workload: Workload, store: Store, folder: Path, uri: str | None, reuse_actors: bool) -> Measurement:
    """Run `workload.n_trials` trials through a Tuner (FIFO, one at a time); training from the trials' reports."""
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    config = overhead_config(workload, folder, uri, "ray-overhead")
    data = prepare_data(BUILTIN_SPECS["digits"], config)
    tracking_uri = uri or f"sqlite:///{folder / 'mlflow.db'}"
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as storage, _environment_kept("MLFLOW_TRACKING_URI"):
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(timed_trainable, data=data, epochs=workload.epochs), {"cpu": 1}),
            param_space=ray_param_space(config.space, 0),
            tune_config=tune.TuneConfig(
                metric="objective",
                mode="min",
                num_samples=workload.n_trials,
                max_concurrent_trials=1,
                reuse_actors=reuse_actors,
            ),
            run_config=tune.RunConfig(
                storage_path=storage,
                verbose=0,
                callbacks=[MLflowLoggerCallback(tracking_uri=tracking_uri, experiment_name="bench-overhead-ray")],
            ),
        )
        started = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - started
    training = sum(float((grid[i].metrics or {}).get("train_seconds", 0.0)) for i in range(len(grid)))
    return Measurement(
        tool="ray-tune" + (" (reuse_actors)" if reuse_actors else " (defaults)"),
        store=store,
        workload=workload.label,
        trials=len(grid),
        wall_s=wall,
        training_s=training,
        search_wall_s=wall,
        search_training_s=training,
        startup_s=0.0,
    )


@contextmanager
def _environment_kept(*names: str) -> Iterator[None]:
    # Ray's MLflowLoggerCallback sets MLFLOW_TRACKING_URI in this process and leaves it: later runs in the same
    # process (the next store, a test) would log to a server that is stopped by then.
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_ray_rows(
    workloads: Sequence[Workload], store: Store, uri: str | None, folder: Path, reuse_modes: Sequence[bool]
) -> tuple[list[Measurement], dict[str, float]]:
    """Ray per reuse mode (False: its default, a fresh worker per trial) and workload, against one store."""
    startup = {"ray.init": start_ray()}
    rows = [measure_ray(w, store, folder, uri, reuse) for reuse in reuse_modes for w in workloads]
    return rows, startup
