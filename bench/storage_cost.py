"""What the Optuna storage costs per trial in the search loop: SQLite against the journal file (the default).

    python bench/storage_cost.py [--trials 40] [--epochs 5] [--rounds 3] [--out bench/results]

Each round runs `--trials` trials on a fresh study of each storage, the kinds taking turns (so machine
load falls on both alike), through the calls the search loop makes: `claim_trial` (the budget lock,
`ask`, the owner marks; the heartbeat too on SQLite), four suggestions, then per epoch `report` and
`should_prune` (median pruner), then `tell` and `release_trial`. No training: what is left is the storage
(and Optuna's own bookkeeping, the same for both). A random sampler keeps the sampler's cost out.
Prints the median over rounds of the milliseconds per trial (per epoch for the report), writes
`<out>/storage_cost.json`.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/storage_cost.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DEFAULT_OUT, format_table, prepare_process, write_results

KINDS = {"sqlite": "sqlite:///{}/optuna.db", "journal": "journal:///{}/optuna.journal"}


def one_round(url: str, trials: int, epochs: int) -> dict[str, float]:
    """Seconds spent in each part over `trials` trials on a fresh study at `url`."""
    import optuna

    from stagetune.search.budget import claim_trial, release_trial
    from stagetune.search.liveness import Liveness
    from stagetune.search.study import make_pruner, open_study

    liveness = Liveness()
    study = open_study(
        "bench", url, "maximize", optuna.samplers.RandomSampler(seed=0), make_pruner("median", epochs), liveness
    )
    spent = dict.fromkeys(("ask", "report", "tell"), 0.0)
    for _ in range(trials):
        started = time.perf_counter()
        trial = claim_trial(study, url, trials, liveness.heartbeat_seconds)
        assert isinstance(trial, optuna.Trial)
        values = [trial.suggest_float(name, 0.0, 1.0) for name in ("lr", "dropout", "width", "decay")]
        asked = time.perf_counter()
        for epoch in range(epochs):
            trial.report(sum(values) * (epoch + 1) / epochs, epoch)
            if trial.should_prune():
                break
        reported = time.perf_counter()
        study.tell(trial, sum(values))
        release_trial(trial, url, liveness.heartbeat_seconds)
        told = time.perf_counter()
        spent["ask"] += asked - started
        spent["report"] += reported - asked
        spent["tell"] += told - reported
    spent["reports"] = sum(len(t.intermediate_values) for t in study.get_trials(deepcopy=False))
    return spent


def measure(trials: int, epochs: int, rounds: int) -> dict[str, Any]:
    """Per storage kind: each round's milliseconds per trial (ask, tell) and per report, and their medians."""
    per_kind: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    load_before = os.getloadavg()
    for _ in range(rounds):
        for kind, pattern in KINDS.items():
            with tempfile.TemporaryDirectory(prefix=f"storage-cost-{kind}-") as folder:
                spent = one_round(pattern.format(folder), trials, epochs)
            per_kind[kind].append(
                {
                    "ask_ms": 1000 * spent["ask"] / trials,
                    "report_ms_per_epoch": 1000 * spent["report"] / spent["reports"],
                    "report_ms_per_trial": 1000 * spent["report"] / trials,
                    "tell_ms": 1000 * spent["tell"] / trials,
                }
            )
    medians = {
        kind: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for kind, results in per_kind.items()
    }
    for values in medians.values():
        values["total_ms_per_trial"] = values["ask_ms"] + values["report_ms_per_trial"] + values["tell_ms"]
    return {
        "trials": trials,
        "epochs": epochs,
        "rounds": rounds,
        "load_average_before_after": [load_before, os.getloadavg()],
        "rounds_ms": per_kind,
        "median_ms": medians,
    }


def main() -> None:
    """Run it, print the table, write `<out>/storage_cost.json`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40, help="trials per study per round")
    parser.add_argument("--epochs", type=int, default=5, help="reports per trial (fewer when the pruner stops it)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON results")
    args = parser.parse_args()
    prepare_process()
    results = measure(args.trials, args.epochs, args.rounds)
    rows = [
        [
            kind,
            f"{m['ask_ms']:.1f}",
            f"{m['report_ms_per_epoch']:.1f}",
            f"{m['tell_ms']:.1f}",
            f"{m['total_ms_per_trial']:.1f}",
        ]
        for kind, m in results["median_ms"].items()
    ]
    headers = ["storage", "ask ms/trial", "report+should_prune ms/epoch", "tell ms/trial", "total ms/trial"]
    print(format_table(headers, rows))
    before, after = results["load_average_before_after"]
    print(f"load average before/after: {before} / {after}")
    print(f"results: {write_results(args.out, 'storage_cost', results)}")


if __name__ == "__main__":
    main()
