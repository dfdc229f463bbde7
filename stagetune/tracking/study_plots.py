"""Study figures for a search stage's MLflow run, drawn with matplotlib's Figure API (thread-safe).

Optimisation history, parameter importances and parallel coordinates, from `TrialRecord`s; fixed
margins (`framed_figure`), as they are drawn at every stage's end and again in the report.
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from schemas.search import TrialRecord
from stagetune.tracking.plots import LEFT_IN, framed_figure, text_width_in

_STATE_STYLE = {"COMPLETE": ("tab:blue", "o"), "PRUNED": ("tab:orange", "x"), "FAIL": ("tab:red", "v")}


def history_figure(trials: Sequence[TrialRecord], objective: str, minimize: bool) -> Figure:
    """Objective against trial number by state, with the best-so-far line of completed trials."""
    figure = framed_figure(6.5, 3.8)
    axes = figure.subplots()
    for state, (color, marker) in _STATE_STYLE.items():
        points = [(t.number, t.value) for t in trials if t.state == state and _finite(t.value)]
        if points:
            axes.scatter(*zip(*points, strict=True), color=color, marker=marker, label=state.lower(), alpha=0.8)
    complete = sorted((t.number, t.value) for t in trials if t.state == "COMPLETE" and _finite(t.value))
    if complete:
        best = np.minimum.accumulate if minimize else np.maximum.accumulate
        numbers, values = zip(*complete, strict=True)
        axes.step(numbers, best(np.array(values, dtype=float)), where="post", color="black", label="best so far")
    axes.set(xlabel="trial", ylabel=objective, title="optimisation history")
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:  # a stage with no trials has nothing to label
        axes.legend()
    return figure


def importances_figure(importances: Mapping[str, float]) -> Figure:
    """Horizontal bars of parameter importances (largest at the top)."""
    names = list(importances)[::-1]
    left = max(LEFT_IN, text_width_in(names) + 0.2)
    figure = framed_figure(max(6.0, left + 3.5), 0.4 * max(len(importances), 3) + 1, left=left)
    axes = figure.subplots()
    axes.barh(names, [importances[n] for n in names], color="tab:blue")
    axes.set(xlabel="importance (fANOVA)", title="parameter importances")
    axes.grid(alpha=0.3, axis="x")
    return figure


def parallel_coordinates_figure(trials: Sequence[TrialRecord], objective: str, minimize: bool) -> Figure:
    """One line per completed trial across its numeric params (scaled 0-1; log params on a log axis)."""
    complete = [t for t in trials if t.state == "COMPLETE" and _finite(t.value)]
    names = sorted({k for t in complete for k, v in t.params.items() if isinstance(v, int | float)})
    # Tick labels turned 30 degrees: their height sets the bottom margin, the first one's reach the left.
    label = text_width_in(names)
    figure = framed_figure(
        max(6.0, 1.2 * len(names) + 2), 4, left=max(LEFT_IN, 0.87 * label + 0.1), bottom=0.5 * label + 0.35
    )
    axes = figure.subplots()
    if not complete or not names:
        axes.text(0.5, 0.5, "no completed trials with numeric parameters", ha="center", transform=axes.transAxes)
        return figure
    columns = {
        name: _scaled([t.params.get(name) for t in complete], log=name.startswith("learning_rate")) for name in names
    }
    values = np.array([t.value for t in complete], dtype=float)
    span = float(np.ptp(values)) or 1.0
    quality = (values.max() - values) / span if minimize else (values - values.min()) / span
    cmap = colormaps["viridis"]
    for row in range(len(complete)):
        ys = [columns[name][row] for name in names]
        axes.plot(range(len(names)), ys, color=cmap(quality[row]), alpha=0.4 + 0.6 * quality[row])
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set(ylabel="scaled value", title=f"parallel coordinates (colour: {objective}, bright = better)")
    return figure


def _scaled(values: Sequence[object], log: bool) -> list[float]:
    numbers = [float(v) if isinstance(v, int | float) else math.nan for v in values]
    if log:
        numbers = [math.log10(v) if v > 0 else math.nan for v in numbers]
    finite = [v for v in numbers if math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    return [(v - low) / (high - low) if high > low and math.isfinite(v) else 0.5 for v in numbers]


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
