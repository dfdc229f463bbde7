"""Summary, targets and table of the search benchmark, computed from the raw outcomes (plain dicts, as in
the JSON results, so a saved run can be summarised again with `search_efficiency.py --resummarise`)."""

import math
from collections.abc import Mapping, Sequence
from typing import Any

from bench.common import format_table, spread

STAGETUNE = "stagetune"
METHODS = ("stagetune", "optuna-random", "optuna-tpe", "optuna-tpe-hyperband", "ray-tune-asha", "optuna-random-2B")
TARGET_PEERS = (("optuna-tpe", "TPE at B"), ("optuna-random-2B", "random search at 2B"))

Outcome = Mapping[str, Any]


def _metric(outcome: Outcome) -> float:
    value = outcome.get("test_metric")
    return math.nan if value is None else float(value)


def wins_ties_losses(outcomes: Sequence[Outcome], dataset: str, peer: str) -> tuple[int, int, int]:
    """Seeds at which stagetune's test metric is above, equal to, below `peer`'s (both finished)."""
    by_seed: dict[int, dict[str, float]] = {}
    for o in outcomes:
        if o["dataset"] == dataset and o["status"] == "ok" and o["method"] in (STAGETUNE, peer):
            by_seed.setdefault(int(o["seed"]), {})[o["method"]] = _metric(o)
    pairs = [(v[STAGETUNE], v[peer]) for v in by_seed.values() if STAGETUNE in v and peer in v]
    wins = sum(ours > theirs + 1e-12 for ours, theirs in pairs)
    losses = sum(ours < theirs - 1e-12 for ours, theirs in pairs)
    return wins, len(pairs) - wins - losses, losses


def summarise(outcomes: Sequence[Outcome], datasets: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """One row per (dataset, metric) and method: test metric median and spread over seeds, ratio of medians to
    stagetune, stagetune's wins/ties/losses against it seed by seed, and the compute it used."""
    rows: list[dict[str, Any]] = []
    for name, metric_name in datasets:
        mine_all = [o for o in outcomes if o["dataset"] == name]
        ours = spread([_metric(o) for o in mine_all if o["method"] == STAGETUNE and o["status"] == "ok"])
        for method in METHODS:
            mine = [o for o in mine_all if o["method"] == method]
            done = [o for o in mine if o["status"] == "ok"]
            metric = spread([_metric(o) for o in done])
            statuses = sorted({str(o["status"]) for o in mine if o["status"] != "ok"})
            rows.append(
                {
                    "dataset": name,
                    "metric": metric_name,
                    "method": method,
                    "status": "ok" if not statuses else "; ".join(statuses),
                    "seeds_ok": len(done),
                    "budget_epochs": spread([float(o["budget_epochs"]) for o in mine]).median,
                    "epochs_used": spread([float(o["epochs_used"]) for o in done]).median,
                    "trials": spread([float(o["trials"]) for o in done]).median,
                    "final_epochs": spread([float(o["final_epochs"]) for o in done]).median,
                    "test": metric.as_dict(),
                    "ratio_to_stagetune": metric.median / ours.median if ours.n else math.nan,
                    "stagetune_wins_ties_losses": list(wins_ties_losses(outcomes, name, method)),
                    "search_seconds": spread([float(o["search_seconds"] or math.nan) for o in done]).median,
                }
            )
    return rows


def targets(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets per dataset: stagetune at B >= TPE at B and >= random search at 2B (medians)."""
    checks = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        row = {r["method"]: r for r in rows if r["dataset"] == dataset}
        for peer, label in TARGET_PEERS:
            ours, theirs = row[STAGETUNE]["test"]["median"], row[peer]["test"]["median"]
            met = bool(math.isfinite(ours) and math.isfinite(theirs) and ours >= theirs)
            checks.append(
                {
                    "dataset": dataset,
                    "target": f"stagetune >= {label}",
                    "stagetune": ours,
                    "peer": theirs,
                    "difference": ours - theirs,
                    "stagetune_wins_ties_losses": row[peer]["stagetune_wins_ties_losses"],
                    "met": met,
                }
            )
    return checks


HEADERS = (
    "dataset",
    "method",
    "budget B (epochs)",
    "epochs run",
    "trials",
    "final epochs",
    "test median",
    "IQR",
    "min-max",
    "ratio to stagetune",
    "stagetune W-T-L",
    "search s",
)


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary as a Markdown table, then one line per target."""
    body: list[list[object]] = []
    for r in rows:
        label = r["dataset"] + {"balanced_accuracy": " (bal. acc)", "r2": " (R²)"}.get(r["metric"], " (acc)")
        if r["status"] != "ok" and not r["seeds_ok"]:
            body.append([label, r["method"], f"{r['budget_epochs']:.0f}", r["status"], *[""] * 8])
            continue
        test = r["test"]
        body.append(
            [
                label,
                r["method"],
                f"{r['budget_epochs']:.0f}",
                f"{r['epochs_used']:.0f}",
                f"{r['trials']:.0f}",
                f"{r['final_epochs']:.0f}",
                f"{test['median']:.4f}",
                f"{test['q25']:.4f}-{test['q75']:.4f}",
                f"{test['min']:.4f}-{test['max']:.4f}",
                f"{r['ratio_to_stagetune']:.3f}",
                "-" if r["method"] == STAGETUNE else "-".join(map(str, r["stagetune_wins_ties_losses"])),
                f"{r['search_seconds']:.1f}",
            ]
        )
    lines = [format_table(HEADERS, body), ""]
    for check in targets(rows):
        wins, ties, losses = check["stagetune_wins_ties_losses"]
        lines.append(
            f"- {check['dataset']}: {check['target']} (median): {'met' if check['met'] else 'MISSED'} "
            f"({check['stagetune']:.4f} vs {check['peer']:.4f}, {check['difference']:+.4f}; "
            f"seed by seed stagetune {wins} better, {ties} equal, {losses} worse)"
        )
    return "\n".join(lines)
