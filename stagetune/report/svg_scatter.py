"""The report's objective-against-hyperparameter scatters, written as SVG text.

The report draws one per sampled hyperparameter (9 for the digits config), at the end of every run.
Drawn with matplotlib they were most of the report's time, whatever the output format: the cost is
matplotlib's tick and text layout, not rasterising. Written as text they cost next to nothing
(figures: bench/README.md, "Design notes moved from code").
"""

import math
from collections.abc import Sequence
from xml.sax.saxutils import escape

from stagetune.tracking.svg_curves import nice_ticks

WIDTH, HEIGHT = 340, 270
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 14, 24, 46  # margins around the plot area (legend on top), in px
STATE_COLOURS = {"COMPLETE": "#1f77b4", "PRUNED": "#ff7f0e", "FAIL": "#d62728"}


def param_scatter_svg(
    name: str,
    points: Sequence[tuple[object, float, str]],
    highlight: Sequence[tuple[object, float, int]],
    log: bool,
    objective: str,
) -> str:
    """Objective (y) against one hyperparameter (x): one dot per (value, objective, state), highlighted trials ringed.

    Choices (strings, booleans) sit on evenly spaced categories in sorted order; numbers on a linear
    axis, or a log one when `log` (non-positive values are then left out).
    """
    categorical = any(isinstance(x, str | bool) for x, _, _ in points)
    labels = sorted({str(x) for x, _, _ in points}) if categorical else []
    axis = _Axis.categories(labels) if categorical else _Axis.numbers([_number(x) for x, _, _ in points], log)
    ys = [y for _, y, _ in points if math.isfinite(y)]
    y_ticks = nice_ticks(min(ys), max(ys)) if ys else [0.0, 1.0]
    y_low, y_high = min([*y_ticks, *ys]), max([*y_ticks, *ys])
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    bottom = _TOP + plot_h

    def x_at(value: object) -> float | None:
        position = axis.position(str(value) if categorical else _number(value))
        return None if position is None else _LEFT + position * plot_w

    def y_at(value: float) -> float:
        return bottom - (value - y_low) / ((y_high - y_low) or 1.0) * plot_h

    x_label = name + (" (log)" if log and not categorical else "")
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        'font-family="DejaVu Sans, Arial, sans-serif" font-size="10">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>',
    ]
    for label, position in axis.ticks:
        x = _LEFT + position * plot_w
        out.append(f'<line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{bottom}" stroke="#e3e3e3"/>')
        out.append(f'<text class="x-tick" x="{x:.1f}" y="{bottom + 13}" text-anchor="middle">{escape(label)}</text>')
    for tick in y_ticks:
        y = y_at(tick)
        out.append(f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + plot_w}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        out.append(f'<text class="y-tick" x="{_LEFT - 5}" y="{y + 3.5:.1f}" text-anchor="end">{tick:g}</text>')
    out.append(f'<text x="{_LEFT + plot_w / 2}" y="{HEIGHT - 8}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(
        f'<text x="12" y="{_TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {_TOP + plot_h / 2})">{escape(objective)}</text>'
    )
    legend_x = float(WIDTH - _RIGHT)
    for state, colour in reversed(STATE_COLOURS.items()):
        dots = [(x_at(x), y_at(y)) for x, y, s in points if s == state and math.isfinite(y)]
        shown = [(x, y) for x, y in dots if x is not None]
        if shown:
            circles = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.2"/>' for x, y in shown)
            out.append(f'<g data-state="{state}" fill="{colour}" fill-opacity="0.65">{circles}</g>')
            # Legend entries right to left along the top margin, for the states that have dots.
            legend_x -= 6.2 * len(state) + 16
            out.append(
                f'<circle cx="{legend_x:.1f}" cy="{_TOP - 10}" r="3.2" fill="{colour}"/>'
                f'<text x="{legend_x + 6:.1f}" y="{_TOP - 6.5}">{state.lower()}</text>'
            )
    for value, objective_value, number in highlight:
        ring_x = x_at(value)
        if ring_x is None or not math.isfinite(objective_value):
            continue
        ring_y = y_at(objective_value)
        out.append(
            f'<g data-trial="{number}"><circle cx="{ring_x:.1f}" cy="{ring_y:.1f}" r="6.5" fill="none" stroke="black" '
            f'stroke-width="1.4"/><text x="{ring_x + 6:.1f}" y="{ring_y - 6:.1f}" font-size="9">#{number}</text></g>'
        )
    out.append("</svg>")
    return "\n".join(out)


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


class _Axis:
    """Where a value falls along the x axis, from 0 (left edge) to 1 (right edge), and the tick labels."""

    def __init__(self, ticks: list[tuple[str, float]], slots: dict[str, float], span: tuple[float, float], log: bool):
        self.ticks, self._slots, self._span, self._log = ticks, slots, span, log

    @classmethod
    def categories(cls, labels: Sequence[str]) -> "_Axis":
        slots = {label: (index + 0.5) / len(labels) for index, label in enumerate(labels)}
        return cls(list(slots.items()), slots, (0.0, 1.0), log=False)

    @classmethod
    def numbers(cls, values: Sequence[float], log: bool) -> "_Axis":
        usable = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
        if not usable:
            return cls([], {}, (0.0, 1.0), log)
        if log:
            low, high = math.log10(min(usable)), math.log10(max(usable))
            pad = max((high - low) * 0.05, 0.05)
            span = (low - pad, high + pad)
            ticks = [(f"{10**k:g}", float(k)) for k in range(math.ceil(span[0]), math.floor(span[1]) + 1)]
            if len(ticks) < 2:  # less than a decade: label round values inside it instead
                ticks = [(f"{t:g}", math.log10(t)) for t in nice_ticks(min(usable), max(usable), 6) if t > 0]
        else:
            low, high = min(usable), max(usable)
            pad = max((high - low) * 0.05, abs(high) * 0.05, 1e-12)
            span = (low - pad, high + pad)
            ticks = [(f"{t:g}", t) for t in nice_ticks(low, high, 5)]
        width = span[1] - span[0]
        placed = [(label, (at - span[0]) / width) for label, at in ticks if span[0] <= at <= span[1]]
        return cls(placed, {}, span, log)

    def position(self, value: str | float) -> float | None:
        if isinstance(value, str):
            return self._slots.get(value)
        if not math.isfinite(value) or (self._log and value <= 0):
            return None
        at = math.log10(value) if self._log else value
        return (at - self._span[0]) / ((self._span[1] - self._span[0]) or 1.0)
