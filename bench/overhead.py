"""Orchestration overhead: wall time of stagetune's pipeline against the training time of its trials, for
trials of ~1 s and ~10 s, with MLflow logging to a local store and to an `mlflow server`; the same
trials through Ray Tune (with its MLflow callback) when Ray is installed.

    python bench/overhead.py [--quick] [--out bench/results]

Trials use `bench.timed_model` (family `custom`): every training step sleeps a fixed time and records
it, so "training" is measured, not estimated. Runs are warm: a first pipeline run (Prefect's server
start, MLflow's store creation) and `ray.init` are timed separately and excluded.
"""

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):  # run as `python bench/overhead.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DEFAULT_OUT, format_table, prepare_process, ray_available, write_results
from bench.mlflow_server import mlflow_server
from bench.timed_model import FACTORIES, LEDGER
from schemas.config import PipelineConfig
from stagetune.config_loading import load_config
from stagetune.prefect_startup import without_flow_heartbeats

Store = Literal["local", "server"]
ROWS = 256  # sampled training rows: 2 steps of 128 per epoch
STEPS_PER_EPOCH = 2
TARGET_PERCENT = 3.0


@dataclass(frozen=True)
class Workload:
    """Trials of `epochs` x 2 steps of `step_seconds`; `n_trials` of them, split between coarse and refine."""

    step_seconds: float
    epochs: int
    n_trials: int

    @property
    def trial_seconds(self) -> float:
        """Nominal training time of one trial."""
        return self.step_seconds * STEPS_PER_EPOCH * self.epochs

    @property
    def label(self) -> str:
        """E.g. '1 s trials'."""
        return f"{self.trial_seconds:g} s trials"


@dataclass(frozen=True)
class Measurement:
    """One timed run: wall time, training inside it, and the overhead both over the whole run and the searches."""

    tool: str
    store: str
    workload: str
    trials: int
    wall_s: float
    training_s: float
    search_wall_s: float
    search_training_s: float
    startup_s: float

    @property
    def overhead_percent(self) -> float:
        """Share of the wall time not spent training."""
        return 100 * (self.wall_s - self.training_s) / self.wall_s

    @property
    def per_trial_ms(self) -> float:
        """Non-training time per trial."""
        return 1000 * (self.wall_s - self.training_s) / max(1, self.trials)

    @property
    def search_overhead_percent(self) -> float:
        """Share of the search stages' time not spent training (for Ray: the same as overhead_percent)."""
        return 100 * (self.search_wall_s - self.search_training_s) / self.search_wall_s

    @property
    def search_per_trial_ms(self) -> float:
        """Non-training time per trial inside the search stages."""
        return 1000 * (self.search_wall_s - self.search_training_s) / max(1, self.trials)

    @property
    def outside_search_s(self) -> float:
        """Non-training seconds outside the search stages (flow start, sample, final stage, report): per run,
        not per trial (for Ray, nothing: its whole run is the search)."""
        return (self.wall_s - self.training_s) - (self.search_wall_s - self.search_training_s)

    def as_dict(self) -> dict[str, Any]:
        """Plain numbers for JSON, derived ones included."""
        return {
            **asdict(self),
            "overhead_percent": self.overhead_percent,
            "per_trial_ms": self.per_trial_ms,
            "search_overhead_percent": self.search_overhead_percent,
            "search_per_trial_ms": self.search_per_trial_ms,
            "outside_search_s": self.outside_search_s,
        }


def overhead_config(
    workload: Workload, workdir: Path, tracking_uri: str | None, name: str, extra: Sequence[str] = ()
) -> PipelineConfig:
    """The pipeline on fixed-duration trials: no sanity gate, no pruning, one final epoch (of 2 steps, like every
    epoch here), one trial at a time."""
    coarse = max(1, workload.n_trials // 2)
    refine = max(1, workload.n_trials - coarse)
    overrides = [
        f"name={name}",
        "data.source=builtin:digits",
        f"sample.max_rows={ROWS}",
        "model.family=custom",
        f"model.import_path=bench.timed_model:{FACTORIES[workload.step_seconds]}",
        "model.baseline.batch_size=128",
        "space.batch_size={kind: categorical, choices: [128]}",
        "sanity.enabled=false",
        f"coarse.n_trials={coarse}",
        f"coarse.epochs={workload.epochs}",
        "coarse.train_fraction=1.0",
        f"refine.n_trials={refine}",
        f"refine.epochs={workload.epochs}",
        "refine.pruner=none",
        "refine.warm_start=0",
        f"refine.narrowing.top_k={min(coarse, 2)}",
        "final.max_epochs=1",
        "training.max_batches_per_epoch=2",  # the final epoch on the full split is 2 steps too
        "execution.device=cpu",
        "execution.concurrency=1",
        f"execution.workdir={workdir}",
        "tracking.experiment=bench-overhead",
    ]
    if tracking_uri is not None:
        overrides.append(f"tracking.uri={tracking_uri}")
    return load_config(None, [*overrides, *extra])


def measure_stagetune(config: PipelineConfig, store: Store, workload: Workload) -> Measurement:
    """Run the flow once; training from the ledger, the search window from the coarse/refine stage runs."""
    from mlflow.tracking import MlflowClient

    from flows.tune_pipeline import tune_pipeline

    LEDGER.clear()
    started = time.time()
    with without_flow_heartbeats():  # as `stagetune run` runs the flow on its temporary Prefect server
        result = tune_pipeline(config)
    ended = time.time()
    if result.status != "completed":
        raise RuntimeError(f"the overhead pipeline did not complete: {result.message}")
    client = MlflowClient(tracking_uri=result.tracking_uri)
    stage_runs = client.search_runs(
        [result.mlflow_experiment_id], f"tags.mlflow.parentRunId = '{result.mlflow_parent_run_id}'"
    )
    windows = [
        (r.info.start_time / 1000, r.info.end_time / 1000)
        for r in stage_runs
        if r.data.tags.get("stagetune.stage") in ("coarse", "refine")
    ]
    trials = sum(len(s.trials) for s in (result.coarse, result.refine) if s is not None)
    return Measurement(
        tool="stagetune",
        store=store,
        workload=workload.label,
        trials=trials,
        wall_s=ended - started,
        training_s=LEDGER.within(started, ended),
        search_wall_s=sum(end - start for start, end in windows),
        search_training_s=sum(LEDGER.within(start, end) for start, end in windows),
        startup_s=0.0,
    )


def run_stagetune_rows(
    workloads: Sequence[Workload], store: Store, uri: str | None, folder: Path, extra: Sequence[str] = ()
) -> list[Measurement]:
    """One measured run per workload against one store (after `warm_up`); `extra` stagetune overrides."""
    rows = []
    for workload in workloads:
        config = overhead_config(workload, folder, uri, f"overhead-{workload.trial_seconds:g}s", extra)
        rows.append(measure_stagetune(config, store, workload))
    return rows


def warm_up(uri: str | None, folder: Path) -> float:
    """A first tiny pipeline run (Prefect's API server, the MLflow store, the experiment); its seconds."""
    from flows.tune_pipeline import tune_pipeline

    started = time.perf_counter()
    tune_pipeline(overhead_config(Workload(0.01, 1, 2), folder, uri, "overhead-warmup"))
    return time.perf_counter() - started


@contextmanager
def tracking_for(store: Store, folder: Path) -> Iterator[tuple[str | None, float]]:
    """(tracking URI, server start seconds): a SQLite store in `folder` and 0, else a fresh lean `mlflow server`.

    The local store is named, not left to the default: Ray's MLflow callback sets `MLFLOW_TRACKING_URI` in this
    process, and a later run would otherwise log to that (by then stopped) server.
    """
    if store == "local":
        yield f"sqlite:///{folder.resolve() / 'mlflow.db'}", 0.0
        return
    with mlflow_server(folder / "server") as (url, seconds):
        yield url, seconds


def table(rows: Sequence[Measurement]) -> str:
    """The measurements as a Markdown table, then the targets."""
    headers = [
        "tool",
        "MLflow",
        "workload",
        "trials",
        "wall s",
        "training s",
        "overhead %",
        "per trial ms",
        "search-stage overhead %",
        "search per trial ms",
        "outside searches s",
    ]
    body = [
        [
            r.tool,
            r.store,
            r.workload,
            r.trials,
            f"{r.wall_s:.1f}",
            f"{r.training_s:.1f}",
            f"{r.overhead_percent:.1f}",
            f"{r.per_trial_ms:.0f}",
            f"{r.search_overhead_percent:.1f}",
            f"{r.search_per_trial_ms:.0f}",
            f"{r.outside_search_s:.1f}",
        ]
        for r in rows
    ]
    return format_table(headers, body) + "\n\n" + "\n".join(f"- {line}" for line in target_lines(rows))


def target_lines(rows: Sequence[Measurement]) -> list[str]:
    """Overhead <= 3% for the shortest trials, and below Ray Tune's on the same trials and store."""
    shortest = min((r.workload for r in rows), key=lambda w: float(w.split()[0]))
    lines = []
    for r in (r for r in rows if r.tool == "stagetune" and r.workload == shortest):
        verdict = "met" if r.overhead_percent <= TARGET_PERCENT else "MISSED"
        lines.append(
            f"stagetune ({r.store}, {shortest}) overhead <= {TARGET_PERCENT:g}%: {verdict} "
            f"({r.overhead_percent:.1f}%; search stages alone {r.search_overhead_percent:.1f}%, "
            f"{r.search_per_trial_ms:.0f} ms per trial; {r.outside_search_s:.1f} s per run outside them)"
        )
        peers = [p for p in rows if p.tool.startswith("ray") and p.store == r.store and p.workload == shortest]
        for peer in peers:
            verdict = "met" if r.overhead_percent < peer.overhead_percent else "MISSED"
            lines.append(
                f"stagetune ({r.store}) below {peer.tool}: {verdict} "
                f"({r.overhead_percent:.1f}% vs {peer.overhead_percent:.1f}%)"
            )
    return lines


def run_overhead(
    workloads: Sequence[Workload],
    stores: Sequence[Store] = ("local", "server"),
    with_ray: bool | None = None,
    ray_defaults: bool = True,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """Measure stagetune (and Ray Tune, if installed: with actor reuse, and at its defaults unless `ray_defaults`
    is False) on every workload against every store; the rows, the excluded start-up times and the table."""
    with_ray = ray_available() if with_ray is None else with_ray
    load_before = os.getloadavg()
    rows: list[Measurement] = []
    startup: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as folder:
        for store in stores:
            with tracking_for(store, Path(folder) / store) as (uri, server_s):
                if server_s:
                    startup["mlflow server start"] = server_s
                startup[f"stagetune first run ({store})"] = warm_up(uri, Path(folder) / store)
                rows += run_stagetune_rows(workloads, store, uri, Path(folder) / store, extra)
                if with_ray:
                    from bench.ray_overhead import run_ray_rows

                    reuse_modes = (False, True) if ray_defaults else (True,)
                    ray_rows, ray_startup = run_ray_rows(workloads, store, uri, Path(folder) / store, reuse_modes)
                    rows += ray_rows
                    for key, seconds in ray_startup.items():
                        startup.setdefault(key, seconds)  # ray.init only costs the first time
    return {
        "workloads": [asdict(w) | {"trial_seconds": w.trial_seconds} for w in workloads],
        "ray_tune": with_ray,
        "stagetune_overrides": list(extra),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "startup_seconds": startup,
        "rows": [r.as_dict() for r in rows],
        "targets": target_lines(rows),
        "table": table(rows),
    }


QUICK = (Workload(0.1, 5, 4), Workload(1.0, 5, 2))
FULL = (Workload(0.1, 5, 20), Workload(1.0, 5, 6))


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark, print the table, write `<out>/overhead[_quick].json`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="4 one-second and 2 ten-second trials; Ray only with actor reuse"
    )
    parser.add_argument("--no-ray", action="store_true", help="skip Ray Tune even if it is installed")
    parser.add_argument("--stores", nargs="+", choices=["local", "server"], default=["local", "server"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra stagetune override")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON results")
    args = parser.parse_args(argv)
    prepare_process()
    workloads = QUICK if args.quick else FULL
    results = run_overhead(
        workloads, args.stores, False if args.no_ray else None, ray_defaults=not args.quick, extra=args.overrides
    )
    path = write_results(args.out, "overhead_quick" if args.quick else "overhead", results)
    print(results["table"])
    print(f"\nstart-up (excluded above): {', '.join(f'{k} {v:.1f} s' for k, v in results['startup_seconds'].items())}")
    print(f"load average before/after: {results['load_average_before']} / {results['load_average_after']}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
