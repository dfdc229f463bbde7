"""A trial's learning curves as a small SVG document (MLflow's artifact viewer shows SVG as an image).

Every trial logs one; drawn with matplotlib and saved as PNG it was a noticeable share of a short
trial (text layout and rasterisation; figures: bench/README.md). Written as SVG text it costs next
to nothing. Two panels, loss and accuracy against epoch, train and validation lines with markers.

Below it, the pieces every other chart of a run is drawn with (`Panel`, `Scale`, `Categories`,
`svg_document`): the study plots, the report's figures, the final stage's confusion matrix.
"""

import itertools
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


# Generic pieces for the other SVG charts (study plots, report, final stage): a panel with linear or
# log axes, lines, markers, bars and a legend. The figures drawn with them cost well under a
# millisecond each, where matplotlib took ~145 ms of text layout per figure (bench/README.md).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
_VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))


def viridis(share: float) -> str:
    """A colour along matplotlib's viridis map (0 dark purple, 1 yellow), interpolated between 5 stops."""
    at = min(max(share, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    low = min(int(at), len(_VIRIDIS) - 2)
    mix = at - low
    red, green, blue = (round(a + (b - a) * mix) for a, b in zip(_VIRIDIS[low], _VIRIDIS[low + 1], strict=True))
    return f"#{red:02x}{green:02x}{blue:02x}"


class Scale:
    """Values to a 0-1 share of an axis: linear, or log10 (non-positive values fall off the axis)."""

    def __init__(self, values: Sequence[float], log: bool = False, fixed: tuple[float, float] | None = None):
        self.log = log
        usable = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
        if fixed is not None:
            low, high = fixed
            ticks = [t for t in nice_ticks(low, high) if low <= t <= high]
        elif log and usable:  # whole decades, in log10 units
            low, high = math.floor(math.log10(min(usable))), math.ceil(math.log10(max(usable)))
            ticks = [float(k) for k in range(low, high + 1)]
        else:
            ticks = nice_ticks(min(usable), max(usable)) if usable else [0.0, 1.0]
            low, high = ticks[0], ticks[-1]
        self.low, self.high = low, (high if high > low else low + 1.0)
        self.ticks = [(f"{10**t:g}" if log else f"{t:g}", t) for t in ticks]

    def share(self, value: float) -> float | None:
        """Where `value` falls (0 low end, 1 high end), None when it cannot be drawn."""
        if not math.isfinite(value) or (self.log and value <= 0):
            return None
        at = math.log10(value) if self.log else value
        return (at - self.low) / (self.high - self.low)


class Categories(Scale):
    """Evenly spaced named slots (bar groups, parameter names, classes), labelled by name."""

    def __init__(self, names: Sequence[str]):
        self.log, self.low, self.high = False, -0.5, len(names) - 0.5
        self.ticks = [(name, float(index)) for index, name in enumerate(names)]


class Panel:
    """One plot area of an SVG chart: axes, grid, ticks, labels; series are added by method calls."""

    def __init__(self, box: tuple[float, float, float, float], x: Scale, y: Scale):
        self.left, self.top, self.width, self.height = box
        self.x, self.y = x, y
        self.parts: list[str] = []
        self.legend_entries: list[tuple[str, str, str]] = []  # (label, colour, "line" | "dash" | "dot" | "bar")

    def at(self, x: float, y: float) -> tuple[float, float] | None:
        """The pixel position of a data point, None when either value cannot be drawn."""
        sx, sy = self.x.share(x), self.y.share(y)
        if sx is None or sy is None:
            return None
        return self.left + sx * self.width, self.top + (1 - sy) * self.height

    def frame(self, title: str = "", x_label: str = "", y_label: str = "", rotate_x: bool = False) -> None:
        """The box, grid lines at the ticks, tick labels, axis labels and the title."""
        bottom, right = self.top + self.height, self.left + self.width
        out = [
            f'<rect x="{self.left}" y="{self.top}" width="{self.width}" height="{self.height}" fill="none" '
            'stroke="#444"/>'
        ]
        for label, value in self.x.ticks:
            x = self.left + (value - self.x.low) / (self.x.high - self.x.low) * self.width
            out.append(f'<line x1="{x:.1f}" y1="{self.top}" x2="{x:.1f}" y2="{bottom}" stroke="#e3e3e3"/>')
            anchor = (
                f'text-anchor="end" transform="rotate(-30 {x:.1f} {bottom + 13})"'
                if rotate_x
                else ('text-anchor="middle"')
            )
            out.append(f'<text x="{x:.1f}" y="{bottom + 13}" {anchor}>{escape(label)}</text>')
        for label, value in self.y.ticks:
            y = bottom - (value - self.y.low) / (self.y.high - self.y.low) * self.height
            out.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#e3e3e3"/>')
            out.append(f'<text x="{self.left - 5}" y="{y + 3.5:.1f}" text-anchor="end">{escape(label)}</text>')
        middle_x, middle_y = self.left + self.width / 2, self.top + self.height / 2
        if title:
            out.append(
                f'<text x="{middle_x}" y="{self.top - 8}" text-anchor="middle" font-size="12">{escape(title)}</text>'
            )
        if x_label:
            out.append(f'<text x="{middle_x}" y="{bottom + 32}" text-anchor="middle">{escape(x_label)}</text>')
        if y_label:
            y_at = self.left - 44
            out.append(
                f'<text x="{y_at}" y="{middle_y}" text-anchor="middle" transform="rotate(-90 {y_at} '
                f'{middle_y})">{escape(y_label)}</text>'
            )
        self.parts[:0] = out

    def line(
        self,
        points: Sequence[tuple[float, float]],
        colour: str,
        label: str = "",
        *,
        dashed: bool = False,
        markers: bool = False,
        step: bool = False,
        opacity: float = 1.0,
        width: float = 1.8,
    ) -> None:
        """A polyline through the drawable points (a staircase when `step`), optionally with dots at them."""
        drawn = [p for x, y in points if (p := self.at(x, y)) is not None]
        if step:
            drawn = [q for a, b in itertools.pairwise(drawn) for q in (a, (b[0], a[1]))] + drawn[-1:]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in drawn)
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        self.parts.append(
            f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="{width}" '
            f'stroke-opacity="{opacity:.2f}"{dash}/>'
        )
        if markers:
            self.parts.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.6" fill="{colour}"/>' for x, y in drawn)
        if label:
            self.legend_entries.append((label, colour, "dash" if dashed else "line"))

    def dots(self, points: Sequence[tuple[float, float]], colour: str, label: str = "", marker: str = "o") -> None:
        """One marker per drawable point: a dot ("o"), a cross ("x") or a triangle ("v")."""
        shapes = []
        for x, y in (p for px, py in points if (p := self.at(px, py)) is not None):
            if marker == "x":
                shapes.append(
                    f'<path d="M{x - 3.5:.1f},{y - 3.5:.1f}l7,7m0,-7l-7,7" stroke="{colour}" stroke-width="1.6"/>'
                )
            elif marker == "v":
                shapes.append(f'<path d="M{x - 4:.1f},{y - 3:.1f}h8l-4,7z" fill="{colour}"/>')
            else:
                shapes.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.4" fill="{colour}"/>')
        self.parts.append(f'<g fill-opacity="0.8">{"".join(shapes)}</g>')
        if label:
            self.legend_entries.append((label, colour, "dot"))

    def rule(self, value: float, colour: str, label: str = "", *, vertical: bool = False, dashed: bool = True) -> None:
        """A horizontal line at y = value (a vertical one at x = value when `vertical`) across the panel."""
        share = (self.x if vertical else self.y).share(value)
        if share is None or not 0 <= share <= 1:
            return
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        if vertical:
            x = self.left + share * self.width
            ends = f'x1="{x:.1f}" y1="{self.top}" x2="{x:.1f}" y2="{self.top + self.height}"'
        else:
            y = self.top + (1 - share) * self.height
            ends = f'x1="{self.left}" y1="{y:.1f}" x2="{self.left + self.width}" y2="{y:.1f}"'
        self.parts.append(f'<line {ends} stroke="{colour}" stroke-width="1.3"{dash}/>')
        if label:
            self.legend_entries.append((label, colour, "dash" if dashed else "line"))

    def bar(
        self, at: float, start: float, end: float, thickness: float, colour: str, *, horizontal: bool = False
    ) -> None:
        """A bar from `start` to `end` on the value axis, centred on `at` and `thickness` wide on the other."""
        value_axis, place_axis = (self.x, self.y) if horizontal else (self.y, self.x)
        a, b = value_axis.share(start), value_axis.share(end)
        c, d = place_axis.share(at - thickness / 2), place_axis.share(at + thickness / 2)
        if a is None or b is None or c is None or d is None:
            return
        if horizontal:
            x, y = self.left + min(a, b) * self.width, self.top + (1 - max(c, d)) * self.height
            w, h = abs(b - a) * self.width, abs(d - c) * self.height
        else:
            x, y = self.left + min(c, d) * self.width, self.top + (1 - max(a, b)) * self.height
            w, h = abs(d - c) * self.width, abs(b - a) * self.height
        self.parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{colour}"/>')

    def text(self, x: float, y: float, content: str, anchor: str = "start", colour: str = "black") -> None:
        """Text at a data point (baseline shifted to centre it vertically)."""
        point = self.at(x, y)
        if point is not None:
            self.parts.append(
                f'<text x="{point[0]:.1f}" y="{point[1] + 3.5:.1f}" text-anchor="{anchor}" '
                f'fill="{colour}">{escape(content)}</text>'
            )

    def legend(self, corner: str = "upper right", entries: Sequence[tuple[str, str, str]] | None = None) -> None:
        """The labelled series in a boxed list at a corner of the panel ("upper"/"lower" + "left"/"right")."""
        rows = list(entries if entries is not None else self.legend_entries)
        if not rows:
            return
        box_w = 30 + 6.2 * max(len(label) for label, _, _ in rows)
        box_h = 6 + 14 * len(rows)
        x = self.left + 6 if corner.endswith("left") else self.left + self.width - box_w - 6
        y = self.top + 6 if corner.startswith("upper") else self.top + self.height - box_h - 6
        out = [
            f'<g class="legend"><rect x="{x:.1f}" y="{y:.1f}" width="{box_w:.1f}" height="{box_h}" fill="white" '
            'fill-opacity="0.85" stroke="#ccc"/>'
        ]
        for row, (label, colour, kind) in enumerate(rows):
            middle = y + 10 + 14 * row
            if kind in ("dot", "bar"):
                out.append(f'<rect x="{x + 8:.1f}" y="{middle - 4:.1f}" width="12" height="8" fill="{colour}"/>')
            else:
                dash = ' stroke-dasharray="5 3"' if kind == "dash" else ""
                out.append(
                    f'<line x1="{x + 4:.1f}" y1="{middle:.1f}" x2="{x + 24:.1f}" y2="{middle:.1f}" '
                    f'stroke="{colour}" stroke-width="2"{dash}/>'
                )
            out.append(f'<text x="{x + 28:.1f}" y="{middle + 3.5:.1f}">{escape(label)}</text>')
        out.append("</g>")
        self.parts.append("".join(out))

    def svg(self) -> str:
        """The panel's elements, in drawing order."""
        return "\n".join(self.parts)


def svg_document(width: float, height: float, body: Sequence[str], title: str = "") -> str:
    """A standalone SVG document of `width` x `height` px holding `body` (panels' SVG), with an optional title."""
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="DejaVu Sans, Arial, sans-serif" font-size="10">'
        f'<rect width="{width:.0f}" height="{height:.0f}" fill="white"/>'
    )
    heading = (
        f'<text x="{width / 2:.0f}" y="18" text-anchor="middle" font-size="13">{escape(title)}</text>' if title else ""
    )
    return "\n".join([head, heading, *body, "</svg>"])
