"""Search efficiency over a suite of real data sets: stagetune against plain Optuna (random, TPE, TPE +
Hyperband), Ray Tune ASHA and random search with twice the budget, at the same compute counted in training
epochs over the same data; and against two references a practitioner checks first (a class-weighted logistic
regression, or ridge for regression, and HistGradientBoosting, each with a small grid chosen on validation).

    python bench/search_efficiency.py [--quick] [--seeds 10] [--datasets glass churn ...] [--out bench/results]

Each data set of `bench.suite_data.SUITE` is written once as a CSV file and run as a newcomer would: the
embedded defaults with only `data.source` and `data.target` set. For each data set and seed, stagetune runs
first; the epochs its coarse and refinement stages actually ran (pruned ones included, a coarse epoch on half
the rows counted as half), plus the epochs its final ensemble trained beyond one network (in the same units),
are the budget B every peer gets ("random 2B" gets twice that). stagetune's row is its own final model's test
score; every peer retrains one network of its best point with stagetune's final-stage rule. All rows of one
seed share one split, so differences are paired.
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/search_efficiency.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DEFAULT_OUT, installed_version, prepare_process, ray_available, write_results
from bench.datasets import DatasetSpec, bench_config, csv_spec, prepare_data
from bench.outcome import MethodOutcome
from bench.references import REFERENCES, reference_outcomes
from bench.search_report import METHODS, PEERS, suite_summary, summarise, table, verdicts
from bench.suite_data import QUICK_SUITE, SUITE, default_cache, suite_spec

# Quick mode: fewer stagetune trials (so a smaller budget B for everyone), one seed, four small data sets.
QUICK_OVERRIDES = ("coarse.n_trials=8", "refine.n_trials=6")
FULL_SEEDS = 10
SKIPPED = ("skipped", "not installed")  # statuses of a method left out of a run, not run and failed
# Trial plots, the report and system-metric sampling do not change what is found (same trials, best point and
# test scores: bench/README.md); they only cost time.
BENCH_OVERRIDES = ("tracking.trial_plots=false", "tracking.report=false", "tracking.system_metrics=false")


def run_seed(
    spec: DatasetSpec, seed: int, workdir: Path, overrides: Sequence[str], with_ray: bool
) -> Iterator[MethodOutcome]:
    """Every method on one dataset at one seed: stagetune first (it sets the budget B), then the peers and the
    references. A method that raises becomes a failed row; the suite goes on."""
    from bench.optuna_peers import run_optuna
    from bench.stagetune_runner import METHOD, run_stagetune

    try:
        config = bench_config(spec, seed, workdir / f"{spec.name}-{seed}", (*BENCH_OVERRIDES, *overrides))
        data = prepare_data(spec, config)
    except Exception as error:  # bad data or config: every row of this cell says why
        yield from (MethodOutcome(m, spec.name, seed, _failure(error)) for m in METHODS)
        return
    ours = _guarded(METHOD, spec.name, seed, lambda: run_stagetune(data, seed))
    yield ours
    budget = math.ceil(ours.epochs_used - 1e-9)
    if budget <= 0:  # stagetune did not search (e.g. its sanity gate stopped it): no budget B, nothing to pair
        no_budget = f"skipped: no budget (stagetune {ours.status})"
        yield from (MethodOutcome(m, spec.name, seed, no_budget) for m in PEERS)
        yield from reference_outcomes(data, seed, REFERENCES)
        return
    peers: list[tuple[str, Callable[[], MethodOutcome]]] = [
        ("optuna-random", lambda: run_optuna("optuna-random", data, budget, seed)),
        ("optuna-tpe", lambda: run_optuna("optuna-tpe", data, budget, seed)),
        ("optuna-tpe-hyperband", lambda: run_optuna("optuna-tpe-hyperband", data, budget, seed)),
    ]
    if with_ray:
        from bench.ray_peers import run_ray_asha

        peers.append(("ray-tune-asha", lambda: run_ray_asha(data, budget, seed)))
    peers.append(("optuna-random-2B", lambda: run_optuna("optuna-random", data, 2 * budget, seed, "optuna-random-2B")))
    for method, run in peers:
        yield _guarded(method, spec.name, seed, run)
    if not with_ray:
        reason = "skipped" if ray_available() else "not installed"
        yield MethodOutcome("ray-tune-asha", spec.name, seed, reason, budget_epochs=budget)
    yield from reference_outcomes(data, seed, REFERENCES)


def _failure(error: BaseException) -> str:
    return f"failed: {type(error).__name__}: {str(error)[:300]}"


def _guarded(method: str, dataset: str, seed: int, run: Callable[[], MethodOutcome]) -> MethodOutcome:
    try:
        return run()
    except Exception as error:  # one method failing on one data set is a result, not the end of the suite
        return MethodOutcome(method, dataset, seed, _failure(error))


def run_search_efficiency(
    specs: Sequence[DatasetSpec],
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    with_ray: bool | None = None,
    progress: Callable[[MethodOutcome], None] | None = None,
    checkpoint: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]:
    """Run every method on every dataset and seed (seed by seed, so a cut-short run holds whole seeds); return
    the raw outcomes, the summaries, the targets' verdicts and the tables. `checkpoint` gets the results so far
    after each data set."""
    with_ray = ray_available() if with_ray is None else with_ray
    outcomes: list[dict[str, Any]] = []
    datasets = [(spec.name, spec.metric) for spec in specs]
    header = {
        "seeds": list(seeds),
        "overrides": list(overrides),
        "ray_tune": with_ray,
        "ray_version": installed_version("ray") if with_ray else None,
        "datasets": [{"name": n, "metric": m} for n, m in datasets],
    }
    with tempfile.TemporaryDirectory(prefix="bench-search-") as folder:
        for seed in seeds:
            for spec in specs:
                for outcome in run_seed(spec, seed, Path(folder), overrides, with_ray):
                    outcomes.append(outcome.as_dict())
                    if progress is not None:
                        progress(outcome)
                if checkpoint is not None:
                    checkpoint(header | summarise_outcomes(outcomes, datasets) | {"complete": False})
    return header | summarise_outcomes(outcomes, datasets) | {"complete": True}


def stagetune_budgets(path: Path) -> dict[tuple[str, int], int]:
    """The budget B stagetune used per (data set, seed) in a saved result file (its finished runs only)."""
    outcomes = json.loads(path.read_text(encoding="utf-8"))["outcomes"]
    return {
        (o["dataset"], int(o["seed"])): math.ceil(float(o["epochs_used"]) - 1e-9)
        for o in outcomes
        if o["method"] == "stagetune" and o["status"] == "ok" and float(o["epochs_used"]) > 0
    }


def run_ray_only(
    specs: Sequence[DatasetSpec],
    seeds: Sequence[int],
    budgets: dict[tuple[str, int], int],
    overrides: Sequence[str] = (),
    progress: Callable[[MethodOutcome], None] | None = None,
    checkpoint: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]:
    """Ray Tune ASHA alone at the budgets B an earlier run's stagetune used (`budgets`), on the same splits (the
    seed fixes them), for the cells that have a budget: a second pass after a run with `--no-ray`, merged into it
    with `--merge`. The same data set, seed and B give the same Ray run as inside the full loop."""
    outcomes: list[dict[str, Any]] = []
    datasets = [(spec.name, spec.metric) for spec in specs]
    header = {"seeds": list(seeds), "overrides": list(overrides), "ray_tune": True, "ray_only": True}
    header |= {"ray_version": installed_version("ray"), "datasets": [{"name": n, "metric": m} for n, m in datasets]}
    with tempfile.TemporaryDirectory(prefix="bench-ray-only-") as folder:
        for spec in specs:
            for seed in seeds:
                budget = budgets.get((spec.name, seed))
                if budget is None:
                    continue
                outcome = _ray_cell(spec, seed, budget, Path(folder), overrides)
                outcomes.append(outcome.as_dict())
                if progress is not None:
                    progress(outcome)
                if checkpoint is not None:
                    checkpoint(header | {"outcomes": list(outcomes), "complete": False})
    return header | {"outcomes": outcomes, "complete": True}


def _ray_cell(spec: DatasetSpec, seed: int, budget: int, folder: Path, overrides: Sequence[str]) -> MethodOutcome:
    from bench.ray_peers import METHOD, run_ray_asha

    try:
        config = bench_config(spec, seed, folder / f"{spec.name}-{seed}", (*BENCH_OVERRIDES, *overrides))
        data = prepare_data(spec, config)
    except Exception as error:  # bad data or config: the row says why
        return MethodOutcome(METHOD, spec.name, seed, _failure(error))
    return _guarded(METHOD, spec.name, seed, lambda: run_ray_asha(data, budget, seed))


def summarise_outcomes(outcomes: Sequence[dict[str, Any]], datasets: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Summary rows, the suite's comparisons and ranks, the verdicts and the tables of raw `outcomes`."""
    rows = summarise(outcomes, datasets)
    suite = suite_summary(outcomes)
    checks = verdicts(outcomes, datasets)
    return {
        "outcomes": list(outcomes),
        "summary": rows,
        "suite": suite,
        "targets": checks,
        "table": table(rows, suite, checks),
    }


def resummarise(path: Path) -> dict[str, Any]:
    """Recompute summary, suite, targets and tables of a saved result file in place (its outcomes are kept)."""
    document = json.loads(path.read_text(encoding="utf-8"))
    datasets = [(d["name"], d["metric"]) for d in document["datasets"]]
    document |= summarise_outcomes(document["outcomes"], datasets)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return document


PART_KEYS = (
    "command",
    "date",
    "machine",
    "seeds",
    "overrides",
    "ray_tune",
    "complete",
    "wall_seconds",
    "load_average_at_start",
    "load_average_now",
)


def merge(paths: Sequence[Path], out: Path, replace: bool = False) -> dict[str, Any]:
    """One result file `out` from several runs' files (e.g. parts of the suite run side by side): their outcomes
    and data sets together, summarised again; each part's command, date, machine and seeds are kept.
    `replace`: a data set in a later file replaces its cells in the earlier ones (a set rerun after a change)."""
    documents = [json.loads(path.read_text(encoding="utf-8")) for path in paths]
    datasets = list(dict.fromkeys((d["name"], d["metric"]) for doc in documents for d in doc["datasets"]))
    per_document = [list(doc["outcomes"]) for doc in documents]
    if replace:
        for index, doc in enumerate(documents):
            rerun = {o["dataset"] for o in doc["outcomes"]}
            for earlier in per_document[:index]:
                earlier[:] = [o for o in earlier if o["dataset"] not in rerun]
    outcomes = _without_superseded([o for rows in per_document for o in rows])
    keys = [(o["dataset"], o["seed"], o["method"]) for o in outcomes]
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})[:3]
        print(
            f"--merge: the files share runs (data set, seed, method), e.g. {twice}: merge disjoint parts",
            file=sys.stderr,
        )
        raise SystemExit(2)
    # A file merged before brings its own parts and sources (adding sets to the suite keeps every run's command).
    parts = [part for doc in documents for part in doc.get("parts", [{k: doc.get(k) for k in PART_KEYS}])]
    sources = [
        source for doc, path in zip(documents, paths, strict=True) for source in doc.get("merged_from", [str(path)])
    ]
    merged = {
        "benchmark": documents[0]["benchmark"],
        "merged_from": sources,
        "parts": parts,
        "datasets": [{"name": n, "metric": m} for n, m in datasets],
        **summarise_outcomes(outcomes, datasets),
    }
    out.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
    return merged


def _without_superseded(outcomes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`outcomes` less the rows of a method skipped in one part (e.g. Ray Tune under `--no-ray`) that another part
    ran for the same data set and seed (e.g. `--ray-only`)."""
    ran = {(o["dataset"], o["seed"], o["method"]) for o in outcomes if not o["status"].startswith(SKIPPED)}
    return [
        o for o in outcomes if not (o["status"].startswith(SKIPPED) and (o["dataset"], o["seed"], o["method"]) in ran)
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"1 seed, {', '.join(QUICK_SUITE)} (unless --datasets), {' '.join(QUICK_OVERRIDES)}",
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help=f"number of seeds (default {FULL_SEEDS}; 1 with --quick)"
    )
    parser.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="seeds run from here (default 0): completes a part cut short, e.g. --first-seed 6 --seeds 4 is 6-9",
    )
    parser.add_argument("--datasets", nargs="+", choices=list(SUITE), default=None, help="default: the whole suite")
    parser.add_argument("--csv", type=Path, help="also benchmark this CSV file")
    parser.add_argument("--target", help="label column of --csv")
    parser.add_argument("--metric", choices=["accuracy", "balanced_accuracy", "r2"], default="balanced_accuracy")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra stagetune override")
    parser.add_argument("--no-ray", action="store_true", help="skip Ray Tune even if it is installed")
    parser.add_argument(
        "--ray-only",
        type=Path,
        metavar="RESULTS",
        help="run only Ray Tune ASHA, at the budgets stagetune used in RESULTS (a run with --no-ray), for its data "
        "sets and seeds among --datasets/--seeds; then --merge RESULTS and this run's file",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON results")
    parser.add_argument("--name", help="results file name (default search_efficiency_suite[_quick])")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="folder for the suite's CSV files (default: $STAGETUNE_BENCH_DATA or ~/.cache/stagetune-bench)",
    )
    parser.add_argument("--resummarise", type=Path, help="only recompute the summary and tables of this result file")
    parser.add_argument("--merge", type=Path, nargs="+", help="only combine these result files into --out/--name")
    parser.add_argument(
        "--replace", action="store_true", help="with --merge: a data set in a later file replaces its earlier cells"
    )
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
    if args.first_seed < 0:
        parser.error(f"--first-seed {args.first_seed}: seeds start at 0 (e.g. --first-seed 6 --seeds 4 runs 6-9)")
    if args.replace and not args.merge:
        parser.error("--replace only changes how --merge combines files: add --merge FILE ...")
    return args


def seeds_of(args: argparse.Namespace) -> list[int]:
    """The seeds to run: `--seeds` of them (10, or 1 with `--quick`) from `--first-seed`."""
    return list(range(args.first_seed, args.first_seed + (args.seeds or (1 if args.quick else FULL_SEEDS))))


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark, print the tables, write `<out>/search_efficiency_suite[_quick].json` after each data set."""
    args = parse_args(argv)
    if args.resummarise is not None:
        print(resummarise(args.resummarise)["table"])
        return
    if args.merge:
        target = args.out / f"{args.name or 'search_efficiency_suite'}.json"
        print(merge(args.merge, target, replace=args.replace)["table"])
        print(f"\nresults: {target}")
        return
    prepare_process()
    import torch

    torch.set_num_threads(args.threads)
    names = args.datasets or (list(QUICK_SUITE) if args.quick else list(SUITE))
    cache = args.cache or default_cache()
    specs = [suite_spec(SUITE[n], cache) for n in names]
    if args.csv is not None:
        specs.append(csv_spec(args.csv, args.target, args.metric))
    seeds = seeds_of(args)
    overrides = [*(QUICK_OVERRIDES if args.quick else ()), *args.overrides]
    name = args.name or ("search_efficiency_suite_quick" if args.quick else "search_efficiency_suite")
    started = time.perf_counter()
    load_at_start = os.getloadavg()  # the machine may be shared: timings mean little under a high load

    def show(outcome: MethodOutcome) -> None:
        print(
            f"{outcome.dataset} seed {outcome.seed} {outcome.method}: {outcome.status}, "
            f"{outcome.epochs_used:.0f}/{outcome.budget_epochs:.0f} epochs, {outcome.trials} trials, "
            f"test {outcome.test_metric:.4f}, {outcome.total_seconds:.1f} s",
            flush=True,
        )

    def save(results: dict[str, Any]) -> Path:
        load = {"load_average_at_start": load_at_start, "load_average_now": os.getloadavg()}
        return write_results(args.out, name, results | {"wall_seconds": time.perf_counter() - started} | load)

    if args.ray_only is not None:
        budgets = stagetune_budgets(args.ray_only)
        results = run_ray_only(specs, seeds, budgets, overrides, progress=show, checkpoint=save)
        path = save(results)
        print(f"\nresults: {path} ({time.perf_counter() - started:.0f} s); merge it with --merge")
        return
    with_ray = None if not args.no_ray else False
    results = run_search_efficiency(specs, seeds, overrides, with_ray=with_ray, progress=show, checkpoint=save)
    path = save(results)
    print()
    print(results["table"])
    print(f"\nresults: {path} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
