"""Memory and loader throughput of a large image folder, read lazily, next to the digits run.

1. Writes (or reuses) a folder of >= 50,000 small synthetic shape images (`stagetune make-example shapes`).
2. Runs `stagetune run` on it and on configs/digits.yaml (both model.family=cnn, the same small budget)
   in child processes, sampling the peak RSS of each process tree (bench/proc_monitor.py): the CLI
   process alone, and the tree summed (DataLoader workers and the Prefect server included; forked
   workers share pages copy-on-write, so the sum overcounts).
3. Measures images/s through the training loader on the folder's sampled training split with
   execution.num_workers 0 and 2 (decode + resize + normalise + collate; no model).

    python bench/image_memory.py [--images 50000] [--size 16] [--quick]

Writes bench/results/image_memory[_quick].json and prints a table. Run it niced on a shared machine.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/image_memory.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DEFAULT_OUT, REPO, format_table, prepare_process, write_results
from bench.proc_monitor import TreeMemoryMonitor

# The same small budget for both runs: the sanity checks, a few trials of one epoch capped at 50 batches.
BUDGET = (
    "model.family=cnn",
    "execution.device=cpu",
    "sanity.overfit_max_steps=300",  # 50 stopped the image run at the gate (0.96 < 0.99 accuracy)
    "sanity.lr_range_steps=20",
    "sanity.baseline_epochs=0",
    "coarse.n_trials=2",
    "coarse.epochs=1",
    "refine.n_trials=1",
    "refine.epochs=1",
    "refine.warm_start=1",
    "refine.narrowing.top_k=2",
    "final.max_epochs=1",
    "training.max_batches_per_epoch=50",
    "tracking.report=false",
)
MARKER = ".complete"


def image_folder(root: Path, images: int, size: int) -> Path:
    """The shapes folder with `images` images of `size` px under `root` (written once, then reused)."""
    from stagetune.examples_data import SHAPES, make_shapes

    folder = root / f"shapes-{images}-{size}"
    if not (folder / MARKER).is_file():
        if folder.exists():
            raise RuntimeError(f"{folder} is incomplete: remove it")
        make_shapes(folder, per_class=images // len(SHAPES), size=size, seed=0)
        (folder / MARKER).write_text("")
    return folder


def measure_run(kind: str, config: Path | None, overrides: Sequence[str], workdir: Path) -> dict[str, Any]:
    """`stagetune run` in a child process (niced like its parent); peak RSS of the CLI and of its tree."""
    executable = Path(sys.executable).with_name("stagetune")
    sets = [a for o in (*overrides, f"execution.workdir={workdir}") for a in ("--set", o)]
    command = [str(executable), "run", *([str(config)] if config else []), *sets]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING"))}
    (workdir / "prefect-home").mkdir(parents=True)
    env["PREFECT_HOME"] = str(workdir / "prefect-home")
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")  # a loaded machine starts it slowly
    started = time.perf_counter()
    pipe = subprocess.PIPE
    with (
        subprocess.Popen(command, stdout=pipe, stderr=pipe, env=env, cwd=REPO) as process,
        TreeMemoryMonitor(process.pid, interval=0.05) as monitor,
    ):
        stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{kind}: stagetune run exited {process.returncode}: {stderr.decode()[-3000:]}")
    figures = {
        "kind": kind,
        "wall_s": time.perf_counter() - started,
        "peak_cli_mib": monitor.peak_root_bytes / 2**20,
        "peak_tree_mib": monitor.peak_tree_bytes / 2**20,
        "peak_processes": monitor.peak_processes,
        "result_line": stdout.decode().strip().splitlines()[0] if stdout.strip() else "",
    }
    print(f"run: {figures}", flush=True)  # a later failure must not lose this run's figures
    return figures


def loader_throughput(folder: Path, workdir: Path, workers: Sequence[int], batches: int) -> list[dict[str, Any]]:
    """Images/s through the training loader (batch 256) of the folder's sampled training split."""
    from schemas.config import PipelineConfig
    from schemas.hyperparams import HyperParams
    from stagetune.data.source import LoadOptions
    from stagetune.data.stage import load_stage_arrays, run_sample_stage
    from stagetune.training.loaders import make_train_loader

    config = PipelineConfig.model_validate({"data": {"source": f"{folder}/"}, "model": {"family": "cnn"}})
    started = time.perf_counter()
    sample = run_sample_stage(config, workdir / "stage1")
    stage1_s = time.perf_counter() - started
    rows = []
    for count in workers:
        arrays = load_stage_arrays(sample, LoadOptions(num_workers=count))
        feed = make_train_loader(arrays.X_train_sampled, arrays.y_train_sampled, HyperParams(batch_size=256), 4, 0)
        iterator = iter(feed.loader)
        next(iterator)  # worker start-up is not throughput
        seen, started = 0, time.perf_counter()
        for _, (_, targets) in zip(range(batches), iterator, strict=False):
            seen += len(targets)
        seconds = time.perf_counter() - started
        rows.append({"num_workers": count, "images": seen, "seconds": seconds, "images_per_s": seen / seconds})
        del iterator, feed
    return [{"stage1_s": stage1_s, "n_rows": sample.n_rows, "n_train_sampled": sample.n_train_sampled}, *rows]


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark, print the table, write `<out>/image_memory[_quick].json`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50_000, help="images in the folder (default 50,000)")
    parser.add_argument("--size", type=int, default=16, help="image side in pixels (default 16)")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "stagetune-image-bench")
    parser.add_argument("--quick", action="store_true", help="5,000 images, throughput only over 10 batches")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON results")
    parser.add_argument("--no-throughput", action="store_true", help="only the two pipeline runs (memory)")
    args = parser.parse_args(argv)
    images = 5_000 if args.quick else args.images
    prepare_process()
    load_before = os.getloadavg()
    started = time.perf_counter()
    folder = image_folder(args.data, images, args.size)
    generate_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="image-memory-") as scratch:
        work = Path(scratch)
        throughput: list[dict[str, Any]] = [{}]
        if not args.no_throughput:
            throughput = loader_throughput(folder, work, (0, 2), 10 if args.quick else 40)
        print(f"Stage 1 and loaders: {throughput}", flush=True)
        runs = [
            measure_run("digits (builtin, in memory)", REPO / "configs" / "digits.yaml", BUDGET, work / "digits"),
            measure_run(
                f"image folder ({images} x {args.size}px, lazy)",
                None,
                (f"data.source={folder}/", "execution.num_workers=2", *BUDGET),
                work / "images",
            ),
        ]
    ratio = runs[1]["peak_cli_mib"] / runs[0]["peak_cli_mib"]
    memory_table = format_table(
        ["run", "wall s", "peak RSS CLI MiB", "peak RSS tree MiB", "processes"],
        [[r["kind"], r["wall_s"], r["peak_cli_mib"], r["peak_tree_mib"], r["peak_processes"]] for r in runs],
    )
    loader_table = format_table(
        ["num_workers", "images", "seconds", "images/s"],
        [[t["num_workers"], t["images"], t["seconds"], t["images_per_s"]] for t in throughput[1:]],
    )
    results = {
        "images": images,
        "size": args.size,
        "generate_s": generate_s,
        "budget": list(BUDGET),
        "runs": runs,
        "peak_cli_ratio_images_to_digits": ratio,
        "stage1": throughput[0],
        "throughput": throughput[1:],
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "table": memory_table + "\n\n" + loader_table,
    }
    name = "image_memory_quick" if args.quick else "image_memory"
    path = write_results(args.out, name + ("_runs" if args.no_throughput else ""), results)
    print(memory_table)
    print(f"peak RSS (CLI process) images / digits: {ratio:.2f}x (target <= 1.5x)")
    if throughput[0]:
        print(f"Stage 1 on {images} files: {throughput[0]['stage1_s']:.1f} s; folder written in {generate_s:.1f} s")
    print(loader_table)
    print(f"load average before/after: {load_before} / {os.getloadavg()}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
