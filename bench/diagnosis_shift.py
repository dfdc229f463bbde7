"""Does the coarse verdict's shift of the narrowed ranges help? stagetune with `refine.diagnosis_shift` on vs
off, paired by data set and seed, nothing else changed (issue 17).

    python bench/diagnosis_shift.py [--datasets wine glass ...] [--seeds 2] [--set key=value ...] [--out bench/results]

Each data set runs as the search-efficiency suite runs it (embedded defaults, only `data.source` and
`data.target` set, trial plots off). Per (data set, seed) both arms run back to back, the arm that goes
first alternating with the seed so machine load does not favour one. A row records the coarse stage's
verdict (from its best trials), what the shift moved, and both arms' test scores. Where the shift moved
nothing the two arms ran the same search, so their difference is the run-to-run noise floor (concurrent
trials finish in varying order); the verdict on the shift reads only the pairs where it moved something,
against that floor.
"""

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/diagnosis_shift.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DEFAULT_OUT, format_table, prepare_process, write_results
from bench.datasets import DatasetSpec, bench_config
from bench.suite_data import SUITE, default_cache, suite_spec
from bench.suite_stats import bootstrap_mean

BENCH_OVERRIDES = ("tracking.trial_plots=false",)
DEFAULT_DATASETS = ("wine", "glass", "penguins", "diabetes", "breast_cancer")
ARMS = (True, False)


def run_arm(spec: DatasetSpec, seed: int, shift: bool, workdir: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """One pipeline run with the shift on or off: its test score, the coarse verdict and what moved."""
    import torch

    from flows.tune_pipeline import tune_pipeline

    extra = (*BENCH_OVERRIDES, *overrides, f"refine.diagnosis_shift.enabled={str(shift).lower()}")
    config = bench_config(spec, seed, workdir / f"{spec.name}-{seed}-{'on' if shift else 'off'}", extra)
    threads = torch.get_num_threads()
    started = time.perf_counter()
    try:
        result = tune_pipeline(config)
    except Exception as error:  # one failed run is a row, not the end of the benchmark
        return {"status": f"failed: {type(error).__name__}: {str(error)[:200]}", "test": math.nan}
    finally:
        torch.set_num_threads(threads)
    coarse, narrowing = result.coarse, result.narrowing
    moved = [c.name for c in narrowing.changes if c.shift] if narrowing is not None else []
    return {
        "status": result.status,
        "test": result.test_metrics.get(spec.metric, math.nan) if result.final is not None else math.nan,
        "verdict": coarse.diagnosis.verdict if coarse is not None else None,
        "agreement": coarse.diagnosis.agreement if coarse is not None else "",
        "top_counts": coarse.diagnosis.top_counts if coarse is not None else {},
        "shift_note": narrowing.diagnosis_shift if narrowing is not None else None,
        "moved": moved,
        "final": result.final.diagnosis.code if result.final is not None else None,
        "seconds": round(time.perf_counter() - started, 1),
    }


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Paired differences (on minus off): where the shift moved ranges, and where it did not (the noise floor)."""
    moved = [r["on"]["test"] - r["off"]["test"] for r in rows if r["on"]["moved"]]
    same = [r["on"]["test"] - r["off"]["test"] for r in rows if not r["on"]["moved"]]
    shifted, floor = bootstrap_mean(moved), bootstrap_mean([abs(d) for d in same])
    return {
        "pairs": len(rows),
        "pairs_shifted": len(moved),
        "shifted_mean_difference": shifted.as_dict(),
        "unshifted_mean_abs_difference": floor.as_dict(),
    }


def table(rows: Sequence[dict[str, Any]]) -> str:
    headers = ["data set", "seed", "coarse verdict (top trials)", "moved", "shift on", "shift off", "on - off"]
    body = []
    for r in rows:
        on, off = r["on"], r["off"]
        split = ", ".join(f"{n} {c}" for c, n in on.get("top_counts", {}).items())
        verdict = f"{on.get('verdict') or 'none'} ({on.get('agreement') or split})"
        body.append(
            [r["dataset"], r["seed"], verdict, ", ".join(on.get("moved", [])) or "-", on["test"], off["test"],
             on["test"] - off["test"]]
        )  # fmt: skip
    return format_table(headers, body)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=sorted(SUITE), default=list(DEFAULT_DATASETS))
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 (default 2)")
    parser.add_argument("--seed-list", type=int, nargs="+", help="these seeds instead of 0..N-1")
    parser.add_argument(
        "--skip-identical",
        action="store_true",
        help="run the shift-on arm first and the off arm only when the shift moved a range: otherwise both arms "
        "run the same search (the pipeline is deterministic per seed) and the off row repeats the on row",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra stagetune override")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--name", default="diagnosis_shift")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    prepare_process()
    cache = default_cache()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-shift-") as folder:
        for seed in args.seed_list or range(args.seeds):
            for name in args.datasets:
                spec = suite_spec(SUITE[name], cache)
                arms = ARMS if seed % 2 == 0 or args.skip_identical else ARMS[::-1]
                row: dict[str, Any] = {"dataset": name, "seed": seed, "overrides": args.overrides}
                for shift in arms:
                    if not shift and args.skip_identical and not row["on"].get("moved"):
                        row["off"] = row["on"] | {"skipped": "identical search: the shift moved nothing"}
                        continue
                    row["on" if shift else "off"] = run_arm(spec, seed, shift, Path(folder), args.overrides)
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
                write_results(args.out, args.name, {"rows": rows, "summary": summarise(rows), "complete": False})
    summary = summarise(rows)
    write_results(args.out, args.name, {"rows": rows, "summary": summary, "complete": True})
    print(table(rows))
    print(summary)


if __name__ == "__main__":
    main()
