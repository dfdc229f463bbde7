"""Where trial tasks run: Prefect's thread pool (default) or a Dask cluster (`execution.task_runner`).

Only trial tasks are submitted to the runner; every other task of the flow runs inline in the
flow's thread. On Dask a trial runs in a worker process, so everything `train_trial.submit(...)`
receives is pickled: the trial context (config, run-tree strings, numpy arrays) and the pruning
reporter, which reaches the Optuna study through its storage (journal or SQLite file, or PostgreSQL).
Workers inherit this process's environment (tracking URI, S3 endpoint and keys) on a local
cluster; the workers of an external cluster need the same variables set where they run.

GPUs: with `execution.gpus_per_trial > 0` each trial submission is annotated with
`resources={"GPU": n}` (`trial_resources`) and each worker advertises the GPUs it owns, so the
scheduler runs at most one such trial per worker at a time. A local cluster gives each worker its
own block of `CUDA_VISIBLE_DEVICES` (as dask-cuda's LocalCUDACluster does); the workers of an
external cluster must be started the same way, e.g.
`CUDA_VISIBLE_DEVICES=0 dask worker tcp://scheduler:8786 --nthreads 1 --resources GPU=1`,
or annotated trials wait for a GPU worker forever.
"""

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from schemas.config import ExecutionConfig
from stagetune.errors import InputError

# Threads for trial tasks; the search loop itself keeps at most `execution.concurrency` in flight.
THREAD_POOL_WORKERS = 64


def make_task_runner(execution: ExecutionConfig) -> TaskRunner[Any]:
    """The task runner `execution` asks for: a thread pool, a local Dask cluster, or a Dask scheduler.

    A local cluster is created when the first trial is submitted and closed when the flow run ends.
    """
    if execution.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=THREAD_POOL_WORKERS)
    from prefect_dask import DaskTaskRunner  # imported only when asked for: it pulls in dask.distributed

    if execution.dask_address is not None:
        return DaskTaskRunner(address=execution.dask_address)
    if execution.gpus_per_trial == 0:
        return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_kwargs(execution))
    return DaskTaskRunner(cluster_class="flows.runners.local_gpu_cluster", cluster_kwargs=gpu_cluster_kwargs(execution))


def local_cluster_kwargs(execution: ExecutionConfig) -> dict[str, Any]:
    """`distributed.LocalCluster` arguments: `dask_workers` processes with one thread each, on loopback only."""
    return {
        "n_workers": execution.dask_workers,
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": None,
    }


def gpu_cluster_kwargs(execution: ExecutionConfig, gpu_count: int | None = None) -> dict[str, Any]:
    """`local_gpu_cluster` arguments: as many workers as whole trials fit on the GPUs, at most `dask_workers`.

    `gpu_count` defaults to the CUDA devices of this machine; too few of them for one trial, or a
    device other than auto/cuda (a worker numbers its own GPUs from cuda:0), is an InputError.
    """
    gpus = execution.gpus_per_trial
    if execution.device not in ("auto", "cuda"):
        raise InputError(
            "execution.device",
            f"{execution.device!r} with gpus_per_trial: each worker numbers its own GPUs from cuda:0: use auto or cuda",
        )
    available = _cuda_device_count() if gpu_count is None else gpu_count
    if available < gpus:
        raise InputError(
            "execution.gpus_per_trial",
            f"{gpus} GPU(s) per trial, but this machine has {available} CUDA device(s): set it to 0 for CPU "
            "trials, or set execution.dask_address to a cluster whose workers have GPUs",
        )
    return {"n_workers": min(execution.dask_workers, available // gpus), "gpus_per_worker": gpus}


def local_gpu_cluster(n_workers: int, gpus_per_worker: int) -> Any:
    """A local Dask cluster whose worker i owns GPUs [i*g, (i+1)*g) and advertises them as resource `GPU`.

    One worker process per block of GPUs, one thread each: a LocalCluster cannot give its workers
    different environments, so the workers are specified one by one.
    """
    from distributed import Nanny, Scheduler, SpecCluster

    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}}
    workers: dict[int, dict[str, Any]] = {}
    for index in range(n_workers):
        devices = ",".join(str(d) for d in range(index * gpus_per_worker, (index + 1) * gpus_per_worker))
        options = {
            "nthreads": 1,
            "host": "127.0.0.1",
            "dashboard_address": None,
            "resources": {"GPU": gpus_per_worker},
            "env": {"CUDA_VISIBLE_DEVICES": devices},
        }
        workers[index] = {"cls": Nanny, "options": options}
    return SpecCluster(workers=workers, scheduler=scheduler, name="stagetune-gpu")


def require_configured_runner(execution: ExecutionConfig, runner: TaskRunner[Any] | None = None) -> None:
    """Refuse to run when `execution.task_runner` asks for Dask but the flow runs on something else.

    `runner` defaults to the current flow run's. `stagetune run` and `stagetune serve` pick the
    runner from the config; a deployment started from prefect.yaml (or `tune_pipeline(config)` in
    Python) keeps the flow's thread pool, and would otherwise ignore the setting silently.
    """
    if execution.task_runner != "dask":
        return
    if runner is None:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        if context is None:  # outside a flow run (e.g. `tune_pipeline.fn`): no runner to check
            return
        runner = context.task_runner
    from prefect_dask import DaskTaskRunner

    if not isinstance(runner, DaskTaskRunner):
        raise InputError(
            "execution.task_runner",
            f"'dask' is set, but this flow run's trials would run on {type(runner).__name__}: start it with "
            "`stagetune run` or `stagetune serve`, which pick the task runner from the config, or set it to threads",
        )


def trial_resources(execution: ExecutionConfig) -> AbstractContextManager[Any]:
    """The context to submit one trial task in: a Dask GPU annotation when trials need GPUs, else nothing.

    Dask reads annotations when a task is submitted, so the `submit` call itself must run inside it.
    """
    if execution.task_runner != "dask" or execution.gpus_per_trial == 0:
        return nullcontext()
    import dask

    return dask.annotate(resources={"GPU": execution.gpus_per_trial})


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
