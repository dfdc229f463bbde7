"""Summary, targets' verdicts and tables of the search benchmark, computed from the raw outcomes (plain dicts, as
in the JSON results, so a saved run can be summarised again with `search_efficiency.py --resummarise`)."""

import math
from collections.abc import Mapping, Sequence
from typing import Any

from bench.common import format_table, spread
from bench.references import LINEAR, REFERENCES
from bench.suite_stats import (
    STAGETUNE,
    Outcome,
    bootstrap_mean,
    collapsed,
    comparison,
    mean_ranks,
    paired,
    scores_by_cell,
)

PEERS = ("optuna-random", "optuna-tpe", "optuna-tpe-hyperband", "ray-tune-asha", "optuna-random-2B")
METHODS = (STAGETUNE, *PEERS, *REFERENCES)
TARGET_PEERS = (("optuna-tpe", "TPE at B"), ("optuna-random-2B", "random search at 2B"))
LINEAR_RATIO = 0.95  # classification: stagetune >= 0.95 x the class-weighted logistic regression
RIDGE_MARGIN = 0.02  # regression: stagetune R² >= ridge's - 0.02


def _mine(outcomes: Sequence[Outcome], dataset: str, method: str) -> list[Outcome]:
    return [o for o in outcomes if o["dataset"] == dataset and o["method"] == method]


def _median(values: Sequence[float]) -> float:
    return spread([float(v) for v in values]).median


def _collapsed(outcome: Outcome, metric: str) -> bool:
    shares = (outcome.get("extra") or {}).get("predicted_shares")
    score = outcome.get("test_metric")
    return collapsed(shares, float(score) if metric == "balanced_accuracy" and score is not None else None)


def summarise(outcomes: Sequence[Outcome], datasets: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """One row per data set and method: test mean and range over seeds, stagetune's paired difference against it
    (mean, 95% bootstrap interval, wins/ties/losses), the compute it used."""
    rows: list[dict[str, Any]] = []
    for name, metric_name in datasets:
        for method in METHODS:
            mine = _mine(outcomes, name, method)
            done = [o for o in mine if o["status"] == "ok" and o["test_metric"] is not None]
            statuses = sorted({str(o["status"]) for o in mine if o["status"] != "ok"})
            scores = [float(o["test_metric"]) for o in done]
            rows.append(
                {
                    "dataset": name,
                    "metric": metric_name,
                    "method": method,
                    "status": ("ok" if mine else "not run") if not statuses else "; ".join(statuses),
                    "seeds_ok": len(done),
                    "test": bootstrap_mean(scores).as_dict()
                    | {"min": min(scores, default=math.nan)}
                    | {"max": max(scores, default=math.nan)},
                    "versus_stagetune": None if method == STAGETUNE else comparison(outcomes, method, name),
                    "budget_epochs": _median([o["budget_epochs"] for o in mine]),
                    "epochs_used": _median([o["epochs_used"] for o in done]),
                    "trials": _median([o["trials"] for o in done]),
                    "final_epochs": _median([o["final_epochs"] for o in done]),
                    "search_seconds": _median([o["search_seconds"] or math.nan for o in done]),
                    "collapsed_seeds": sorted(int(o["seed"]) for o in done if _collapsed(o, metric_name)),
                }
            )
    return rows


def suite_summary(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Over every data set and seed: stagetune against each method, and the mean rank of the methods that
    finished in every cell stagetune finished (a method run on part of the suite only, e.g. Ray Tune skipped, is left
    out of it)."""
    present = [m for m in METHODS if any(o["method"] == m and o["status"] == "ok" for o in outcomes)]
    cells = [scores for scores in scores_by_cell(outcomes).values() if STAGETUNE in scores]
    everywhere = [m for m in present if all(m in scores for scores in cells)]
    rank, ranked = mean_ranks(outcomes, everywhere)
    return {
        "versus": {m: comparison(outcomes, m) for m in present if m != STAGETUNE},
        "mean_rank": rank,
        "ranked_cells": ranked,
        "not_ranked": [m for m in present if m not in everywhere],
    }


def _reference_check(outcomes: Sequence[Outcome], dataset: str, metric: str) -> dict[str, Any]:
    pairs = paired(outcomes, LINEAR, dataset)
    ours = float(sum(p.ours for p in pairs) / len(pairs)) if pairs else math.nan
    theirs = float(sum(p.theirs for p in pairs) / len(pairs)) if pairs else math.nan
    if metric == "r2":
        target, bound = f"R² >= ridge - {RIDGE_MARGIN}", theirs - RIDGE_MARGIN
    else:
        target, bound = f"test {metric} >= {LINEAR_RATIO} x class-weighted logistic regression", LINEAR_RATIO * theirs
    met = None if not pairs else bool(ours >= bound)
    failed = sorted({str(o["status"]) for o in _mine(outcomes, dataset, STAGETUNE) if o["status"] != "ok"})
    if failed and met is not False:  # a run that gave the newcomer no model misses the target
        met = False
    check = {"target": target, "scope": dataset, "value": ours, "bound": bound, "reference": theirs, "met": met}
    return check | ({"stagetune_failed": "; ".join(failed)} if failed else {})


def verdicts(outcomes: Sequence[Outcome], datasets: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """The issue's targets, each met (True), missed (False) or not measured (None), with the figures behind it."""
    checks = []
    for peer, label in TARGET_PEERS:
        interval = comparison(outcomes, peer)["difference"]
        met = None if interval["n"] < 2 else bool(interval["low"] >= 0)  # one pair has no interval
        checks.append(
            {
                "target": f"stagetune - {label}: 95% CI lower end >= 0 (mean paired difference over the suite)",
                "scope": "suite",
                "value": interval["mean"],
                "bound": interval["low"],
                "reference": interval["high"],
                "pairs": interval["n"],
                "met": met,
            }
        )
    checks += [_reference_check(outcomes, name, metric) for name, metric in datasets]
    finished = [o for o in outcomes if o["method"] == STAGETUNE and o["status"] == "ok"]
    metrics = dict(datasets)
    fallen = [f"{o['dataset']} seed {o['seed']}" for o in finished if _collapsed(o, metrics.get(o["dataset"], ""))]
    checks.append(
        {
            "target": "no final model collapses to one class (>= 98% of test predictions one class, near-chance score)",
            "scope": "suite",
            "value": len(fallen),
            "bound": 0,
            "reference": ", ".join(fallen),
            "met": None if not finished else not fallen,
        }
    )
    return checks


def _interval(value: Mapping[str, Any]) -> str:
    if not value["n"]:
        return "-"
    return f"{value['mean']:+.4f} [{value['low']:+.4f}, {value['high']:+.4f}]"


DATASET_HEADERS = (
    "dataset",
    "method",
    "seeds",
    "test mean",
    "min-max",
    "stagetune - method [95% CI]",
    "stagetune W-T-L",
    "budget B",
    "trials",
    "search s",
)


def _dataset_row(r: Mapping[str, Any]) -> list[object]:
    label = r["dataset"] + {"balanced_accuracy": " (bal. acc)", "r2": " (R²)"}.get(r["metric"], " (acc)")
    if not r["seeds_ok"]:
        return [label, r["method"], 0, r["status"], *[""] * 6]
    test, versus = r["test"], r["versus_stagetune"]
    mean = f"{test['mean']:.4f}" + (" (collapsed: seeds " + ",".join(map(str, r["collapsed_seeds"])) + ")") * bool(
        r["collapsed_seeds"]
    )
    return [
        label,
        r["method"],
        r["seeds_ok"],
        mean,
        f"{test['min']:.4f}-{test['max']:.4f}",
        "-" if versus is None else _interval(versus["difference"]),
        "-" if versus is None else "-".join(map(str, versus["wins_ties_losses"])),
        f"{r['budget_epochs']:.0f}" if r["method"] not in REFERENCES else "-",
        f"{r['trials']:.0f}",
        f"{r['search_seconds']:.1f}",
    ]


def table(rows: Sequence[Mapping[str, Any]], suite: Mapping[str, Any], checks: Sequence[Mapping[str, Any]]) -> str:
    """Per data set rows, the suite's summary per method, then one line per target."""
    lines = [format_table(DATASET_HEADERS, [_dataset_row(r) for r in rows if r["status"] != "not run"]), ""]
    body = [
        [
            method,
            f"{rank:.2f}",
            "-" if method == STAGETUNE else _interval(suite["versus"][method]["difference"]),
            "-" if method == STAGETUNE else "-".join(map(str, suite["versus"][method]["wins_ties_losses"])),
        ]
        for method, rank in sorted(suite["mean_rank"].items(), key=lambda item: item[1])
    ]
    body += [
        [
            method,
            "not in every cell",
            _interval(suite["versus"][method]["difference"]),
            "-".join(map(str, suite["versus"][method]["wins_ties_losses"])),
        ]
        for method in suite.get("not_ranked", [])
    ]
    headers = ("method", f"mean rank ({suite['ranked_cells']} cells)", "stagetune - method [95% CI]", "W-T-L")
    lines += [format_table(headers, body), ""]
    for check in checks:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[check["met"]]
        lines.append(f"- {check['scope']}: {check['target']}: **{verdict}** ({_check_figures(check)})")
    return "\n".join(lines)


def _check_figures(check: Mapping[str, Any]) -> str:
    if check["scope"] == "suite" and "CI" in check["target"]:
        return (
            f"mean {check['value']:+.4f}, 95% CI [{check['bound']:+.4f}, {check['reference']:+.4f}], "
            f"{check['pairs']} pairs"
        )
    if "collapses" in check["target"]:
        return f"{check['value']} collapsed" + (f": {check['reference']}" if check["reference"] else "")
    failed = f"; stagetune {check['stagetune_failed']}" if check.get("stagetune_failed") else ""
    return f"stagetune {check['value']:.4f}, {LINEAR} {check['reference']:.4f}, bound {check['bound']:.4f}{failed}"
