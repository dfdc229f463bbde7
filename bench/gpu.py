"""GPU throughput: trials per hour of stagetune's search stages on the digits config, with the GPU's utilisation
sampled by `nvidia-smi`; the same trials through Ray Tune when it is installed. Without CUDA it says so.

    python bench/gpu.py [--quick] [--out bench/results]
"""

import argparse
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):  # run as `python bench/gpu.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DEFAULT_OUT, format_table, prepare_process, ray_available, write_results
from bench.datasets import BUILTIN_SPECS, bench_config, prepare_data

SKIPPED = "skipped: no CUDA"
QUICK_OVERRIDES = ("coarse.n_trials=8", "refine.n_trials=6")


def parse_smi_line(line: str) -> tuple[float, float] | None:
    """`utilization.gpu, memory.used` as printed by nvidia-smi's csv,noheader,nounits; None if unparsable."""
    parts = [p.strip() for p in line.split(",")]
    try:
        return float(parts[0]), float(parts[1])
    except (IndexError, ValueError):
        return None


class GpuSampler:
    """`nvidia-smi` polled every `interval_ms` in a child process; (time, utilisation %, memory MiB) samples."""

    def __init__(self, interval_ms: int = 200) -> None:
        self.interval_ms = interval_ms
        self.samples: list[tuple[float, float, float]] = []
        self._process: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "GpuSampler":
        command = [
            "nvidia-smi",
            "--query-gpu=utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
            f"-lms={self.interval_ms}",
            "--id=0",
        ]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        stream = self._process.stdout
        self._thread = threading.Thread(target=self._read, args=(stream,), name="nvidia-smi", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _read(self, stream: IO[str] | None) -> None:
        for line in stream or ():
            parsed = parse_smi_line(line)
            if parsed is not None:
                self.samples.append((time.time(), *parsed))

    def summary(self, start: float, end: float) -> dict[str, float]:
        """Mean and max utilisation and peak memory of the samples taken in [start, end]."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside:
            return {"util_mean": math.nan, "util_max": math.nan, "memory_max_mib": math.nan, "samples": 0}
        return {
            "util_mean": statistics.fmean(s[1] for s in inside),
            "util_max": max(s[1] for s in inside),
            "memory_max_mib": max(s[2] for s in inside),
            "samples": len(inside),
        }


def stagetune_row(overrides: Sequence[str], folder: Path) -> dict[str, Any]:
    """The digits pipeline on CUDA; trials per hour over its two search stages."""
    from flows.tune_pipeline import tune_pipeline

    config = bench_config(BUILTIN_SPECS["digits"], 0, folder, ("execution.device=cuda", *overrides))
    with GpuSampler() as sampler:
        started = time.time()
        result = tune_pipeline(config)
        ended = time.time()
    stages = [s for s in (result.coarse, result.refine) if s is not None]
    trials, seconds = sum(len(s.trials) for s in stages), sum(s.seconds for s in stages)
    return {
        "tool": "stagetune",
        "trials": trials,
        "search_s": seconds,
        "trials_per_hour": 3600 * trials / seconds,
        "concurrency": config.execution.concurrency,
        **sampler.summary(started, ended),
    }


def ray_row(trials: int, overrides: Sequence[str], folder: Path) -> dict[str, Any]:
    """The same number of digits trials (full length, random search) through Ray Tune on the GPU."""
    from ray import tune

    from bench.ray_peers import asha_trainable, start_ray
    from bench.space import ray_param_space

    config = bench_config(BUILTIN_SPECS["digits"], 0, folder, ("execution.device=cuda", *overrides))
    data = prepare_data(BUILTIN_SPECS["digits"], config)
    concurrency = config.execution.concurrency
    start_ray()
    space = ray_param_space(config.space, 0) | {"trial_seed": tune.randint(0, 2**31 - 1)}
    trainable = tune.with_parameters(asha_trainable, data=data, max_epochs=config.refine.epochs)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1, "gpu": 1 / concurrency}),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="objective", mode="min", num_samples=trials, reuse_actors=True, max_concurrent_trials=concurrency
        ),
        run_config=tune.RunConfig(storage_path=str(folder / "ray"), verbose=0),
    )
    with GpuSampler() as sampler:
        started = time.time()
        tuner.fit()
        ended = time.time()
    seconds = ended - started
    return {
        "tool": "ray-tune",
        "trials": trials,
        "search_s": seconds,
        "trials_per_hour": 3600 * trials / seconds,
        "concurrency": concurrency,
        **sampler.summary(started, ended),
    }


def run_gpu(quick: bool, with_ray: bool | None = None) -> dict[str, Any]:
    """Both rows when CUDA is available; otherwise a result that says it was skipped."""
    import torch

    if not torch.cuda.is_available():
        return {"status": SKIPPED, "rows": [], "table": SKIPPED}
    if shutil.which("nvidia-smi") is None:
        return {"status": "skipped: nvidia-smi not found", "rows": [], "table": "skipped: nvidia-smi not found"}
    with_ray = ray_available() if with_ray is None else with_ray
    overrides = QUICK_OVERRIDES if quick else ()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as folder:
        rows = [stagetune_row(overrides, Path(folder) / "stagetune")]
        if with_ray:
            rows.append(ray_row(int(rows[0]["trials"]), overrides, Path(folder) / "ray"))
    return {"status": "ok", "device": torch.cuda.get_device_name(0), "rows": rows, "table": table(rows)}


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as a Markdown table."""
    headers = [
        "tool",
        "trials",
        "concurrency",
        "search s",
        "trials per hour",
        "GPU util mean %",
        "GPU util max %",
        "GPU memory max MiB",
    ]
    body = [
        [
            r["tool"],
            r["trials"],
            r["concurrency"],
            f"{r['search_s']:.1f}",
            f"{r['trials_per_hour']:.0f}",
            f"{r['util_mean']:.0f}",
            f"{r['util_max']:.0f}",
            f"{r['memory_max_mib']:.0f}",
        ]
        for r in rows
    ]
    return format_table(headers, body)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark (or report that there is no GPU), print the table, write `<out>/gpu[_quick].json`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer trials (8 coarse, 6 refine)")
    parser.add_argument("--no-ray", action="store_true", help="skip Ray Tune even if it is installed")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON results")
    args = parser.parse_args(argv)
    prepare_process()
    results = run_gpu(args.quick, False if args.no_ray else None)
    path = write_results(args.out, "gpu_quick" if args.quick else "gpu", results)
    print(results["table"])
    print(f"results: {path}")


if __name__ == "__main__":
    main()
