"""A trial's learning curves as a small SVG document (MLflow's artifact viewer shows SVG as an image).

Every trial logs one; drawn with matplotlib and saved as PNG it was a noticeable share of a short
trial (text layout and rasterisation; figures: bench/README.md). Written as SVG text it costs next
to nothing. Two panels, loss and accuracy against epoch, train and validation lines with markers.
"""

import math
from collections.abc import Sequence
from xml.sax.saxutils import escape

from schemas.results import EpochRecord

WIDTH, HEIGHT = 800, 320
_PANEL_W, _PANEL_H = 320, 220
_PANELS_X = (70, 460)  # left edge of each panel
_TOP = 50
_COLOURS = {"train": "#1f77b4", "validation": "#ff7f0e"}
Series = dict[str, list[tuple[float, float]]]


def learning_curve_svg(history: Sequence[EpochRecord], title: str) -> str:
    """Train and validation loss (left) and accuracy (right) against epoch, as an SVG document."""
    val = [r for r in history if r.val_loss is not None]
    loss: Series = {"train": [(r.epoch, r.train_loss) for r in history]}
    score = history[0].score_pair()[0] if history else "accuracy"
    acc: Series = {"train": [(r.epoch, t) for r in history if (t := r.score_pair()[1]) is not None]}
    if val:
        loss["validation"] = [(r.epoch, r.val_loss) for r in val if r.val_loss is not None]
        acc["validation"] = [(r.epoch, v) for r in val if (v := r.score_pair()[2]) is not None]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Arial, sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>',
        _panel(_PANELS_X[0], "loss", loss, None, legend_low=False),
        _panel(_PANELS_X[1], score, acc, (0.0, 1.02) if score == "accuracy" else None, legend_low=True),
        "</svg>",
    ]
    return "\n".join(parts)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values (steps of 1, 2 or 5 x 10^k) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _panel(left: float, name: str, series: Series, fixed: tuple[float, float] | None, legend_low: bool) -> str:
    points = [p for line in series.values() for p in line if math.isfinite(p[1])]
    epochs = [p[0] for p in points] or [0.0]
    values = [p[1] for p in points] or [0.0]
    x_ticks = nice_ticks(min(epochs), max(epochs), 6)
    x_ticks = [t for t in x_ticks if t == int(t)] or [min(epochs)]  # epochs are whole numbers
    y_ticks = nice_ticks(*(fixed or (min(values), max(values))))
    x_low, x_high = min(x_ticks[0], min(epochs)), max(x_ticks[-1], max(epochs))
    y_low, y_high = fixed or (min(y_ticks[0], min(values)), max(y_ticks[-1], max(values)))

    def x_at(epoch: float) -> float:
        return left + (epoch - x_low) / ((x_high - x_low) or 1.0) * _PANEL_W

    def y_at(value: float) -> float:
        return _TOP + _PANEL_H - (value - y_low) / ((y_high - y_low) or 1.0) * _PANEL_H

    bottom = _TOP + _PANEL_H
    out = [f'<g class="panel" data-name="{name}">']
    out.append(f'<rect x="{left}" y="{_TOP}" width="{_PANEL_W}" height="{_PANEL_H}" fill="none" stroke="#444"/>')
    for tick in x_ticks:
        x = x_at(tick)
        out.append(f'<line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{bottom}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{bottom + 15}" text-anchor="middle">{tick:g}</text>')
    for tick in (t for t in y_ticks if y_low <= t <= y_high):
        y = y_at(tick)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + _PANEL_W}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>')
    out.append(f'<text x="{left + _PANEL_W / 2}" y="{_TOP - 8}" text-anchor="middle" font-size="12">{name}</text>')
    out.append(f'<text x="{left + _PANEL_W / 2}" y="{bottom + 32}" text-anchor="middle">epoch</text>')
    for row, (label, line) in enumerate(series.items()):
        colour = _COLOURS.get(label, "#2ca02c")
        finite = [(x_at(e), y_at(v)) for e, v in line if math.isfinite(v)]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in finite)
        out.append(
            f'<polyline data-series="{label}" points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>'
        )
        out.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in finite)
        # Legend in a corner the curves usually leave free: loss falls, accuracy rises.
        legend_y = (bottom - 10 - 16 * (len(series) - 1 - row)) if legend_low else (_TOP + 16 + 16 * row)
        out.append(
            f'<line x1="{left + _PANEL_W - 95}" y1="{legend_y - 4}" x2="{left + _PANEL_W - 75}" y2="{legend_y - 4}" '
            f'stroke="{colour}" stroke-width="2"/>'
        )
        out.append(f'<text x="{left + _PANEL_W - 70}" y="{legend_y}">{label}</text>')
    out.append("</g>")
    return "\n".join(out)
