"""One-panel line and bar charts as SVG text, for the figures logged before the first trial starts.

The sample and sanity stages log four small figures on the way to the first trial; drawn with
matplotlib and saved as PNG they took most of the sanity stage's time (bench/README.md, issue 18).
Written as SVG text they cost next to nothing, as the trials' learning curves do
(`stagetune.tracking.svg_curves`, whose tick rule this module reuses).
"""

import math
from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape

from schemas.results import LrRangePoint
from stagetune.tracking.svg_curves import nice_ticks

WIDTH, HEIGHT = 560, 380
_LEFT, _TOP, _PANEL_W, _PANEL_H = 70, 40, 460, 250
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")
Points = Sequence[tuple[float, float]]


def line_chart_svg(
    series: Mapping[str, Points],
    title: str,
    x_label: str,
    y_label: str,
    *,
    log_x: bool = False,
    y_range: tuple[float, float] | None = None,
    marker: tuple[float, str] | None = None,
) -> str:
    """Lines of (x, y) points in one panel; non-finite points (and x <= 0 on a log axis) are left out.

    `y_range` fixes the visible y range (points outside it are clipped to the frame); `marker` draws a
    dashed vertical line at x with its label in the legend.
    """
    shown = {name: [(x, y) for x, y in line if _plottable(x, y, log_x)] for name, line in series.items()}
    xs = [(math.log10(x) if log_x else x) for line in shown.values() for x, _ in line] or [0.0]
    ys = [y for line in shown.values() for _, y in line] or [0.0]
    if marker is not None and _plottable(marker[0], 0.0, log_x):
        xs.append(math.log10(marker[0]) if log_x else marker[0])
    x_ticks = _log_ticks(min(xs), max(xs)) if log_x else nice_ticks(min(xs), max(xs), 6)
    y_ticks = nice_ticks(*(y_range or (min(ys), max(ys))))
    x_low, x_high = min([*x_ticks, *xs]), max([*x_ticks, *xs])
    y_low, y_high = y_range or (min([*y_ticks, *ys]), max([*y_ticks, *ys]))

    def x_at(x: float) -> float:
        value = math.log10(x) if log_x else x
        return _LEFT + (value - x_low) / ((x_high - x_low) or 1.0) * _PANEL_W

    def y_at(y: float) -> float:
        clipped = min(max(y, y_low), y_high)
        return _TOP + _PANEL_H - (clipped - y_low) / ((y_high - y_low) or 1.0) * _PANEL_H

    out = _frame(title, x_label, y_label)
    for tick in x_ticks:
        x = _LEFT + (tick - x_low) / ((x_high - x_low) or 1.0) * _PANEL_W
        out.append(_x_tick(x, f"{10**tick:g}" if log_x else f"{tick:g}"))
    out.extend(_y_tick(y_at(tick), tick) for tick in y_ticks if y_low <= tick <= y_high)
    legend: list[tuple[str, str, str]] = []
    for index, (name, line) in enumerate(shown.items()):
        colour = _PALETTE[index % len(_PALETTE)]
        coords = " ".join(f"{x_at(x):.1f},{y_at(y):.1f}" for x, y in line)
        out.append(f'<polyline data-series="{escape(name)}" points="{coords}" fill="none" stroke="{colour}"/>')
        legend.append((name, colour, ""))
    if marker is not None and _plottable(marker[0], 0.0, log_x):
        x = x_at(marker[0])
        out.append(
            f'<line data-marker="{marker[0]:g}" x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{_TOP + _PANEL_H}" '
            'stroke="#d62728" stroke-dasharray="6 4"/>'
        )
        legend.append((marker[1], "#d62728", ' stroke-dasharray="6 4"'))
    out.extend(_legend(legend))
    return "\n".join([*out, "</svg>"])


def bar_chart_svg(
    categories: Sequence[str], series: Mapping[str, Mapping[str, float]], title: str, y_label: str
) -> str:
    """Grouped bars: for each category, one bar per series (a missing value counts as 0)."""
    top = max([value for counts in series.values() for value in counts.values()] or [0.0])
    y_ticks = nice_ticks(0.0, top or 1.0)
    y_high = max(y_ticks[-1], top) if y_ticks else 1.0

    def y_at(value: float) -> float:
        return _TOP + _PANEL_H - value / y_high * _PANEL_H

    out = _frame(title, "class", y_label)
    out.extend(_y_tick(y_at(tick), tick) for tick in y_ticks)
    slot = _PANEL_W / max(len(categories), 1)
    width = 0.8 * slot / max(len(series), 1)
    for position, category in enumerate(categories):
        out.append(_x_tick(_LEFT + (position + 0.5) * slot, category))
    legend: list[tuple[str, str, str]] = []
    for index, (name, counts) in enumerate(series.items()):
        colour = _PALETTE[index % len(_PALETTE)]
        out.append(f'<g data-series="{escape(name)}" fill="{colour}">')
        for position, category in enumerate(categories):
            value = float(counts.get(category, 0))
            x = _LEFT + position * slot + 0.1 * slot + index * width
            out.append(
                f'<rect data-category="{escape(category)}" data-value="{value:g}" x="{x:.1f}" y="{y_at(value):.1f}" '
                f'width="{width:.1f}" height="{_TOP + _PANEL_H - y_at(value):.1f}"/>'
            )
        out.append("</g>")
        legend.append((name, colour, ""))
    out.extend(_legend(legend))
    return "\n".join([*out, "</svg>"])


def step_curve_svg(losses: Sequence[float], title: str, y_label: str = "training loss") -> str:
    """Loss against optimizer step (the sanity stage's overfit test)."""
    return line_chart_svg({"loss": [(step, loss) for step, loss in enumerate(losses, 1)]}, title, "step", y_label)


def lr_range_svg(points: Sequence[LrRangePoint], suggestion: float | None) -> str:
    """Smoothed and raw loss against learning rate (log axis), with the suggested rate marked."""
    series = {
        "smoothed loss": [(p.lr, p.smoothed_loss) for p in points],
        "loss": [(p.lr, p.loss) for p in points],
    }
    # The raw loss explodes at the end of the ramp: keep the informative part in view.
    first_half = [p.smoothed_loss for p in points[: max(1, len(points) // 2)] if math.isfinite(p.smoothed_loss)]
    y_range = (0.0, 2 * max(first_half)) if first_half and max(first_half) > 0 else None
    marker = (suggestion, f"suggested {suggestion:.2g}") if suggestion is not None else None
    return line_chart_svg(series, "LR range test", "learning rate", "loss", log_x=True, y_range=y_range, marker=marker)


def _plottable(x: float, y: float, log_x: bool) -> bool:
    return math.isfinite(x) and math.isfinite(y) and (x > 0 or not log_x)


def _log_ticks(low: float, high: float) -> list[float]:
    """Whole powers of ten (as exponents) covering [low, high]."""
    return [float(k) for k in range(math.floor(low), math.ceil(high) + 1)] or [math.floor(low)]


def _frame(title: str, x_label: str, y_label: str) -> list[str]:
    middle_y = _TOP + _PANEL_H / 2
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Arial, sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{_LEFT + _PANEL_W / 2}" y="24" text-anchor="middle" font-size="14">{escape(title)}</text>',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{_PANEL_W}" height="{_PANEL_H}" fill="none" stroke="#444"/>',
        f'<text x="{_LEFT + _PANEL_W / 2}" y="{_TOP + _PANEL_H + 34}" text-anchor="middle">{escape(x_label)}</text>',
        f'<text x="16" y="{middle_y}" text-anchor="middle" transform="rotate(-90 16 {middle_y})">'
        f"{escape(y_label)}</text>",
    ]


def _x_tick(x: float, label: str) -> str:
    bottom = _TOP + _PANEL_H
    return (
        f'<line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{bottom}" stroke="#ddd"/>'
        f'<text x="{x:.1f}" y="{bottom + 15}" text-anchor="middle">{escape(label)}</text>'
    )


def _y_tick(y: float, value: float) -> str:
    return (
        f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + _PANEL_W}" y2="{y:.1f}" stroke="#ddd"/>'
        f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value:g}</text>'
    )


def _legend(entries: Sequence[tuple[str, str, str]]) -> list[str]:
    # Top right, inside the frame: the curves here fall (losses) or are bars starting at zero.
    right = _LEFT + _PANEL_W
    out = []
    for row, (label, colour, dash) in enumerate(entries):
        y = _TOP + 16 + 16 * row
        out.append(
            f'<line x1="{right - 150}" y1="{y - 4}" x2="{right - 130}" y2="{y - 4}" stroke="{colour}" '
            f'stroke-width="2"{dash}/><text x="{right - 125}" y="{y}">{escape(label)}</text>'
        )
    return out
