"""Search efficiency: stagetune against plain Optuna, Optuna TPE + Hyperband, Ray Tune ASHA and random search
with twice the budget, at the same compute counted in training epochs over the same data.

    python bench/search_efficiency.py [--quick] [--seeds 5] [--csv data.csv --target label] [--out bench/results]

For each dataset and seed, stagetune runs first; the epochs its coarse and refinement stages actually
ran (pruned ones included, a coarse epoch on half the rows counted as half) are the budget B every
peer gets ("random 2B" gets twice that). Every method then retrains its best point with stagetune's
final-stage rule and is scored once on the held-out test split.
"""

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/search_efficiency.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DEFAULT_OUT, installed_version, prepare_process, ray_available, write_results
from bench.datasets import BUILTIN_SPECS, DatasetSpec, bench_config, csv_spec, prepare_data
from bench.outcome import MethodOutcome
from bench.search_report import summarise, table, targets

# Quick mode: fewer stagetune trials (so a smaller budget B for everyone), one seed, two datasets.
QUICK_OVERRIDES = ("coarse.n_trials=8", "refine.n_trials=6")
# Trial plots do not change what is found; they only cost time.
BENCH_OVERRIDES = ("tracking.trial_plots=false",)


def run_seed(
    spec: DatasetSpec, seed: int, workdir: Path, overrides: Sequence[str], with_ray: bool
) -> Iterator[MethodOutcome]:
    """Every method on one dataset at one seed: stagetune first (it sets the budget B), then the peers."""
    from bench.optuna_peers import run_optuna
    from bench.stagetune_runner import run_stagetune

    config = bench_config(spec, seed, workdir / f"{spec.name}-{seed}", (*BENCH_OVERRIDES, *overrides))
    data = prepare_data(spec, config)
    ours = run_stagetune(data, seed)
    yield ours
    budget = math.ceil(ours.epochs_used - 1e-9)
    yield run_optuna("optuna-random", data, budget, seed)
    yield run_optuna("optuna-tpe", data, budget, seed)
    yield run_optuna("optuna-tpe-hyperband", data, budget, seed)
    if with_ray:
        from bench.ray_peers import run_ray_asha

        yield run_ray_asha(data, budget, seed)
    else:
        reason = "skipped" if ray_available() else "not installed"
        yield MethodOutcome("ray-tune-asha", spec.name, seed, reason, budget_epochs=budget)
    yield run_optuna("optuna-random", data, 2 * budget, seed, name="optuna-random-2B")


def run_search_efficiency(
    specs: Sequence[DatasetSpec],
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    with_ray: bool | None = None,
    progress: Callable[[MethodOutcome], None] | None = None,
) -> dict[str, Any]:
    """Run every method on every dataset and seed; return the raw outcomes, the summary rows and the table."""
    with_ray = ray_available() if with_ray is None else with_ray
    outcomes: list[MethodOutcome] = []
    with tempfile.TemporaryDirectory(prefix="bench-search-") as folder:
        for spec in specs:
            for seed in seeds:
                for outcome in run_seed(spec, seed, Path(folder), overrides, with_ray):
                    outcomes.append(outcome)
                    if progress is not None:
                        progress(outcome)
    plain = [o.as_dict() for o in outcomes]
    datasets = [(spec.name, spec.metric) for spec in specs]
    rows = summarise(plain, datasets)
    return {
        "seeds": list(seeds),
        "overrides": list(overrides),
        "ray_tune": with_ray,
        "ray_version": installed_version("ray") if with_ray else None,
        "datasets": [{"name": n, "metric": m} for n, m in datasets],
        "outcomes": plain,
        "summary": rows,
        "targets": targets(rows),
        "table": table(rows),
    }


def resummarise(path: Path) -> dict[str, Any]:
    """Recompute summary, targets and table of a saved result file in place (its outcomes are kept)."""
    document = json.loads(path.read_text(encoding="utf-8"))
    datasets = [(d["name"], d["metric"]) for d in document.get("datasets", [])]
    if not datasets:  # files written before "datasets" was recorded
        datasets = list(dict.fromkeys((r["dataset"], r["metric"]) for r in document["summary"]))
    rows = summarise(document["outcomes"], datasets)
    document |= {"datasets": [{"name": n, "metric": m} for n, m in datasets], "summary": rows}
    document |= {"targets": targets(rows), "table": table(rows)}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return document


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="1 seed, digits + breast cancer (unless --datasets), fewer trials"
    )
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5; 1 with --quick)")
    parser.add_argument("--datasets", nargs="+", choices=sorted(BUILTIN_SPECS), default=None)
    parser.add_argument("--csv", type=Path, help="also benchmark this CSV file")
    parser.add_argument("--target", help="label column of --csv")
    parser.add_argument("--metric", choices=["accuracy", "balanced_accuracy", "r2"], default="accuracy")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra stagetune override")
    parser.add_argument("--no-ray", action="store_true", help="skip Ray Tune even if it is installed")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON results")
    parser.add_argument("--resummarise", type=Path, help="only recompute the summary and table of this result file")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads of this process (default 1: what stagetune gives each of 2 concurrent trials on "
        "2 cores, and results then do not depend on the core count)",
    )
    args = parser.parse_args(argv)
    if args.csv is not None and not args.target:
        parser.error("--csv needs --target (the label column)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark, print the table, write `<out>/search_efficiency[_quick].json`."""
    args = parse_args(argv)
    if args.resummarise is not None:
        print(resummarise(args.resummarise)["table"])
        return
    prepare_process()
    import torch

    torch.set_num_threads(args.threads)
    classification = ["digits", "breast_cancer", "imbalanced"]
    names = args.datasets or (["digits", "breast_cancer"] if args.quick else classification)
    specs = [BUILTIN_SPECS[n] for n in names]
    if args.csv is not None:
        specs.append(csv_spec(args.csv, args.target, args.metric))
    seeds = list(range(args.seeds or (1 if args.quick else 5)))
    overrides = [*(QUICK_OVERRIDES if args.quick else ()), *args.overrides]

    def show(outcome: MethodOutcome) -> None:
        print(
            f"{outcome.dataset} seed {outcome.seed} {outcome.method}: {outcome.status}, "
            f"{outcome.epochs_used:.0f}/{outcome.budget_epochs:.0f} epochs, {outcome.trials} trials, "
            f"test {outcome.test_metric:.4f}, {outcome.total_seconds:.1f} s",
            flush=True,
        )

    results = run_search_efficiency(specs, seeds, overrides, with_ray=None if not args.no_ray else False, progress=show)
    name = "search_efficiency_quick" if args.quick else "search_efficiency"
    path = write_results(args.out, name, results)
    print()
    print(results["table"])
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
