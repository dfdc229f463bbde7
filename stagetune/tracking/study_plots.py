"""Study figures for a search stage's MLflow run and the report, as SVG text.

Optimisation history, parameter importances and parallel coordinates, from `TrialRecord`s. Every
stage draws them when it ends, and the report again; drawn as SVG text instead of matplotlib
figures they cost next to nothing (bench/README.md, "Profiles").
"""

import math
from collections.abc import Mapping, Sequence

from schemas.search import TrialRecord
from stagetune.tracking.svg_curves import Categories, Panel, Scale, svg_document, viridis

_STATE_STYLE = {"COMPLETE": ("#1f77b4", "o"), "PRUNED": ("#ff7f0e", "x"), "FAIL": ("#d62728", "v")}
_CHAR_PX = 6.2  # mean advance of a 10 px DejaVu Sans character: label widths without drawing them


def history_svg(trials: Sequence[TrialRecord], objective: str, minimize: bool) -> str:
    """Objective against trial number by state, with the best-so-far line of completed trials."""
    finite = [t for t in trials if _finite(t.value)]
    panel = Panel(
        (70, 40, 550, 290),
        Scale([float(t.number) for t in trials] or [0.0, 1.0]),
        Scale([float(t.value) for t in finite if t.value is not None]),
    )
    for state, (colour, marker) in _STATE_STYLE.items():
        points = [(float(t.number), float(t.value)) for t in finite if t.state == state and t.value is not None]
        if points:
            panel.dots(points, colour, state.lower(), marker)
    complete = sorted((t.number, float(t.value)) for t in finite if t.state == "COMPLETE" and t.value is not None)
    if complete:
        best, line = complete[0][1], []
        for number, value in complete:
            best = min(best, value) if minimize else max(best, value)
            line.append((float(number), best))
        panel.line(line, "black", "best so far", step=True, width=1.5)
    panel.frame("optimisation history", "trial", objective)
    panel.legend("upper right" if minimize else "lower right")
    return svg_document(640, 380, [panel.svg()])


def importances_svg(importances: Mapping[str, float], x_label: str = "importance (fANOVA)") -> str:
    """Horizontal bars of parameter importances (largest at the top)."""
    names = list(importances)[::-1]
    left = max(70.0, _CHAR_PX * max((len(n) for n in names), default=0) + 16)
    height = 28 * max(len(names), 3)
    panel = Panel((left, 36, 330, height), Scale([0.0, *importances.values()]), Categories(names))
    for row, name in enumerate(names):
        panel.bar(float(row), 0.0, importances[name], 0.7, "#1f77b4", horizontal=True)
    panel.frame("parameter importances", x_label)
    return svg_document(left + 350, height + 80, [panel.svg()])


def parallel_coordinates_svg(trials: Sequence[TrialRecord], objective: str, minimize: bool) -> str:
    """One line per completed trial across its numeric params (scaled 0-1; log params on a log axis)."""
    complete = [t for t in trials if t.state == "COMPLETE" and _finite(t.value)]
    names = sorted({k for t in complete for k, v in t.params.items() if isinstance(v, int | float)})
    # Tick labels turned 30 degrees: their length sets the bottom margin.
    label = _CHAR_PX * max((len(n) for n in names), default=0)
    width = max(600.0, 90 * len(names) + 160)
    title = f"parallel coordinates (colour: {objective}, bright = better)"
    panel = Panel((70, 40, width - 100, 280), Categories(names or [""]), Scale([], fixed=(0.0, 1.0)))
    if not complete or not names:
        panel.text(0.0, 0.5, "no completed trials with numeric parameters", anchor="middle")
        panel.frame(title, y_label="scaled value")
        return svg_document(width, 380, [panel.svg()])
    columns = {
        name: _scaled([t.params.get(name) for t in complete], log=name.startswith("learning_rate")) for name in names
    }
    values = [float(t.value) for t in complete if t.value is not None]
    span = (max(values) - min(values)) or 1.0
    quality = [(max(values) - v) / span if minimize else (v - min(values)) / span for v in values]
    for row in sorted(range(len(complete)), key=lambda r: quality[r]):  # the best drawn last, on top
        ys = [(float(index), columns[name][row]) for index, name in enumerate(names)]
        panel.line(ys, viridis(quality[row]), opacity=0.4 + 0.6 * quality[row], width=1.4)
    panel.frame(title, y_label="scaled value", rotate_x=True)
    return svg_document(width, 340 + 0.5 * label + 20, [panel.svg()])


def _scaled(values: Sequence[object], log: bool) -> list[float]:
    numbers = [float(v) if isinstance(v, int | float) else math.nan for v in values]
    if log:
        numbers = [math.log10(v) if v > 0 else math.nan for v in numbers]
    finite = [v for v in numbers if math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    return [(v - low) / (high - low) if high > low and math.isfinite(v) else 0.5 for v in numbers]


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
