"""Start-up and memory: time from `stagetune run` (a child process) to its first trial starting, and the peak
resident memory of the whole run (the CLI and everything it starts, e.g. Prefect's ephemeral server).

    python bench/startup_memory.py [--quick] [--config configs/digits.yaml] [--out bench/results]

The first run gets a fresh PREFECT_HOME and store (cold: Prefect creates its database); the later ones
reuse both (warm). Times come from the runs' own MLflow records (each stage's and trial's start time)
against the moment the child process was started.
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/startup_memory.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DEFAULT_OUT, REPO, format_table, prepare_process, write_results
from bench.proc_monitor import TreeMemoryMonitor

TARGET_FIRST_TRIAL_WARM_S = 8.0  # issue 18
TARGET_FIRST_TRIAL_COLD_S = 15.0
TARGET_PEAK_GIB = 2.0


@dataclass(frozen=True)
class StartupRun:
    """One `stagetune run`: seconds from process start to each milestone, total wall time, peak memory."""

    kind: str  # "cold" or "warm"
    exit_code: int
    flow_body_s: float  # the flow's first stage starts (imports, Prefect start, flow run created)
    sanity_s: float
    coarse_s: float
    first_trial_s: float
    wall_s: float
    peak_tree_mib: float
    peak_cli_mib: float
    peak_processes: int
    cli_cpu_to_first_trial_s: float  # CPU seconds the CLI process used until its first trial started: steadier
    # than wall time on a shared machine (the server child's CPU is not in it)


def stagetune_command(config: Path, workdir: Path, overrides: Sequence[str]) -> list[str]:
    """`stagetune run CONFIG` with its stores under `workdir`."""
    executable = Path(sys.executable).with_name("stagetune")
    sets = [arg for o in (f"execution.workdir={workdir}", *overrides) for arg in ("--set", o)]
    return [str(executable), "run", str(config), *sets]


def milestones(workdir: Path, experiment: str) -> dict[str, float]:
    """Start times (epoch seconds) of the newest pipeline run's stages and of its first trial, from MLflow."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise RuntimeError(f"no MLflow experiment {experiment!r} under {workdir}")
    runs = client.search_runs([found.experiment_id], max_results=5000)
    parents = [r for r in runs if "stagetune.pipeline" in r.data.tags]
    parent = max(parents, key=lambda r: r.info.start_time)
    ours = {parent.info.run_id}
    ours |= {r.info.run_id for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    family = [r for r in runs if r.info.run_id in ours or r.data.tags.get("mlflow.parentRunId") in ours]
    times: dict[str, float] = {}
    for run in family:
        stage = run.data.tags.get("stagetune.stage")
        key = "first_trial" if "stagetune.trial" in run.data.tags else stage
        if key is not None:
            times[key] = min(times.get(key, float("inf")), run.info.start_time / 1000)
    return times


def measure(config: Path, workdir: Path, prefect_home: Path, kind: str, overrides: Sequence[str]) -> StartupRun:
    """Run the CLI once in a child process, sampling its process tree's memory; read the milestones back."""
    from stagetune.config_loading import load_config

    experiment = load_config(config, list(overrides)).tracking.experiment
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING"))}
    env["PREFECT_HOME"] = str(prefect_home)
    started = time.time()
    with subprocess.Popen(
        stagetune_command(config, workdir, overrides),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    ) as process:
        with TreeMemoryMonitor(process.pid) as monitor, CpuClock(process.pid) as cpu:
            _stdout, stderr = process.communicate()
        wall = time.time() - started
    if process.returncode != 0:
        raise RuntimeError(f"stagetune run exited {process.returncode}: {stderr.decode()[-2000:]}")
    times = milestones(workdir, experiment)
    return StartupRun(
        kind=kind,
        exit_code=process.returncode,
        flow_body_s=times.get("sample", float("nan")) - started,
        sanity_s=times.get("sanity", float("nan")) - started,
        coarse_s=times.get("coarse", float("nan")) - started,
        first_trial_s=times.get("first_trial", float("nan")) - started,
        wall_s=wall,
        peak_tree_mib=monitor.peak_tree_bytes / 2**20,
        peak_cli_mib=monitor.peak_root_bytes / 2**20,
        peak_processes=monitor.peak_processes,
        cli_cpu_to_first_trial_s=cpu.at(times.get("first_trial", float("nan"))),
    )


class CpuClock:
    """Samples one process's CPU seconds (user + system, /proc) every `interval` seconds, with the wall time."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-clock", daemon=True)

    def __enter__(self) -> "CpuClock":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, epoch_s: float) -> float:
        """The CPU seconds of the last sample taken at or before `epoch_s` (NaN if none)."""
        before = [cpu for wall, cpu in self.samples if wall <= epoch_s]
        return before[-1] if before else float("nan")

    def _run(self) -> None:
        ticks = os.sysconf("SC_CLK_TCK")
        while not self._stop.is_set():
            try:
                stat = Path(f"/proc/{self.pid}/stat").read_text()
            except OSError:
                break
            fields = stat[stat.rfind(")") + 2 :].split()  # utime, stime: fields 14 and 15 of stat
            self.samples.append((time.time(), (int(fields[11]) + int(fields[12])) / ticks))
            time.sleep(self.interval)


def run_startup_memory(config: Path, warm_runs: int, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """One cold run, then `warm_runs` warm ones; the rows, the targets (on the warm median) and the table."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as folder:
        home, workdir = Path(folder) / "prefect-home", Path(folder) / "work"
        runs = [measure(config, workdir, home, "cold", overrides)]
        runs += [measure(config, workdir, home, "warm", overrides) for _ in range(warm_runs)]
    warm = [r for r in runs if r.kind == "warm"] or runs
    first_trial = statistics.median(r.first_trial_s for r in warm)
    peak_gib = max(r.peak_tree_mib for r in runs) / 1024
    checks = [
        {
            "target": f"time to first trial <= {TARGET_FIRST_TRIAL_WARM_S:g} s (warm median)",
            "value": first_trial,
            "met": first_trial <= TARGET_FIRST_TRIAL_WARM_S,
        },
        {
            "target": f"peak RSS <= {TARGET_PEAK_GIB:g} GiB (whole process tree, any run)",
            "value": peak_gib,
            "met": peak_gib <= TARGET_PEAK_GIB,
        },
        {
            "target": f"time to first trial <= {TARGET_FIRST_TRIAL_COLD_S:g} s (cold)",
            "value": runs[0].first_trial_s,
            "met": runs[0].first_trial_s <= TARGET_FIRST_TRIAL_COLD_S,
        },
    ]
    return {
        "config": str(config),
        "overrides": list(overrides),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "children_max_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "runs": [asdict(r) for r in runs],
        "targets": checks,
        "table": table(runs, checks),
    }


def table(runs: Sequence[StartupRun], checks: Sequence[dict[str, Any]]) -> str:
    """The runs as a Markdown table, then the targets."""
    headers = [
        "run",
        "flow body starts s",
        "sanity starts s",
        "coarse starts s",
        "first trial s",
        "wall s",
        "peak RSS tree MiB",
        "peak RSS CLI MiB",
        "processes",
        "CLI CPU s to first trial",
    ]
    body = [
        [
            r.kind,
            f"{r.flow_body_s:.1f}",
            f"{r.sanity_s:.1f}",
            f"{r.coarse_s:.1f}",
            f"{r.first_trial_s:.1f}",
            f"{r.wall_s:.1f}",
            f"{r.peak_tree_mib:.0f}",
            f"{r.peak_cli_mib:.0f}",
            r.peak_processes,
            f"{r.cli_cpu_to_first_trial_s:.1f}",
        ]
        for r in runs
    ]
    lines = [f"- {c['target']}: {'met' if c['met'] else 'MISSED'} ({c['value']:.2f})" for c in checks]
    return format_table(headers, body) + "\n\n" + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark, print the table, write `<out>/startup_memory[_quick].json`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one cold and one warm run (default: 1 cold, 3 warm)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "digits.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra stagetune override")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON results")
    args = parser.parse_args(argv)
    prepare_process()
    results = run_startup_memory(args.config.resolve(), 1 if args.quick else 3, args.overrides)
    path = write_results(args.out, "startup_memory_quick" if args.quick else "startup_memory", results)
    print(results["table"])
    print(f"load average before/after: {results['load_average_before']} / {results['load_average_after']}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
