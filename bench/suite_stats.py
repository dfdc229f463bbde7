"""Statistics of the benchmark suite, on the raw outcomes (plain dicts as in the JSON results): paired differences
of stagetune against a peer (same data set and seed, hence the same split), their mean with a 95% percentile
bootstrap interval, wins/ties/losses, and each method's mean rank over the (data set, seed) cells."""

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

STAGETUNE = "stagetune"
TIE = 1e-9  # two test scores closer than this are a tie (the same predictions give the same score)

Outcome = Mapping[str, Any]


@dataclass(frozen=True)
class Pair:
    """stagetune's and a peer's test score on one data set at one seed."""

    dataset: str
    seed: int
    ours: float
    theirs: float

    @property
    def difference(self) -> float:
        """stagetune minus the peer: positive when stagetune did better."""
        return self.ours - self.theirs


@dataclass(frozen=True)
class Interval:
    """A mean and its bootstrap confidence interval, over `n` values."""

    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        """Plain data for JSON."""
        return asdict(self)


def _score(outcome: Outcome) -> float:
    value = outcome.get("test_metric")
    if outcome.get("status") != "ok" or value is None:
        return math.nan
    return float(value)


def scores_by_cell(outcomes: Sequence[Outcome]) -> dict[tuple[str, int], dict[str, float]]:
    """(data set, seed) -> method -> finite test score (failed or missing runs left out)."""
    cells: dict[tuple[str, int], dict[str, float]] = {}
    for outcome in outcomes:
        value = _score(outcome)
        if math.isfinite(value):
            cells.setdefault((str(outcome["dataset"]), int(outcome["seed"])), {})[str(outcome["method"])] = value
    return cells


def paired(outcomes: Sequence[Outcome], peer: str, dataset: str | None = None) -> list[Pair]:
    """Every (data set, seed) where both stagetune and `peer` have a score, optionally on one data set only."""
    pairs = []
    for (name, seed), scores in sorted(scores_by_cell(outcomes).items()):
        if (dataset is None or name == dataset) and STAGETUNE in scores and peer in scores:
            pairs.append(Pair(name, seed, scores[STAGETUNE], scores[peer]))
    return pairs


def bootstrap_mean(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> Interval:
    """The mean of `values` and its percentile bootstrap interval (resampling the values with replacement).

    One value gives an interval of zero width at it; none gives NaN.
    """
    data = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if data.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(data.mean()), float(low), float(high), int(data.size))


def wins_ties_losses(pairs: Sequence[Pair]) -> tuple[int, int, int]:
    """Pairs where stagetune scored higher, the same (within `TIE`), lower."""
    wins = sum(p.difference > TIE for p in pairs)
    losses = sum(p.difference < -TIE for p in pairs)
    return wins, len(pairs) - wins - losses, losses


def ranks(scores: Mapping[str, float]) -> dict[str, float]:
    """Rank of each method by score (1 = best, higher is better); tied methods share their average rank."""
    ordered = sorted(scores.items(), key=lambda item: -item[1])
    result: dict[str, float] = {}
    start = 0
    while start < len(ordered):
        end = start
        while end + 1 < len(ordered) and abs(ordered[end + 1][1] - ordered[start][1]) <= TIE:
            end += 1
        for method, _ in ordered[start : end + 1]:
            result[method] = (start + end) / 2 + 1
        start = end + 1
    return result


def mean_ranks(outcomes: Sequence[Outcome], methods: Sequence[str]) -> tuple[dict[str, float], int]:
    """Each method's mean rank over the (data set, seed) cells where every one of `methods` has a score;
    also the number of such cells."""
    totals = dict.fromkeys(methods, 0.0)
    complete = 0
    for scores in scores_by_cell(outcomes).values():
        if not all(m in scores for m in methods):
            continue
        complete += 1
        for method, rank in ranks({m: scores[m] for m in methods}).items():
            totals[method] += rank
    if not complete:
        return dict.fromkeys(methods, math.nan), 0
    return {m: total / complete for m, total in totals.items()}, complete


def comparison(outcomes: Sequence[Outcome], peer: str, dataset: str | None = None) -> dict[str, Any]:
    """stagetune against `peer` (on one data set, or over the suite): mean paired difference, its 95% bootstrap
    interval, and wins/ties/losses."""
    pairs = paired(outcomes, peer, dataset)
    interval = bootstrap_mean([p.difference for p in pairs])
    return {"peer": peer, "difference": interval.as_dict(), "wins_ties_losses": list(wins_ties_losses(pairs))}


COLLAPSE_SHARE = 0.98  # "(nearly) all": one class takes at least this share of the test predictions
CHANCE_MARGIN = 0.05  # ... and balanced accuracy, when known, is within this of chance (1 / classes)


def collapsed(shares: Sequence[float] | None, balanced_accuracy: float | None = None) -> bool:
    """A classifier collapsed to one class: that class takes >= 98% of its test predictions and, when its
    balanced accuracy is known, that is within 0.05 of chance (so a model on a 97%-majority set that still
    finds some minority rows is not counted)."""
    if not shares or max(shares) < COLLAPSE_SHARE:
        return False
    return balanced_accuracy is None or balanced_accuracy <= 1 / len(shares) + CHANCE_MARGIN
