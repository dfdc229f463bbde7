"""Regression's counterpart of the confusion matrix: predicted against actual, and the residuals, as SVG text."""

import math
from collections.abc import Sequence
from xml.sax.saxutils import escape

import numpy as np

from schemas.final import RegressionTestMetrics
from stagetune.tracking.svg_curves import nice_ticks

WIDTH, HEIGHT = 360, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 60, 14, 28, 46
_BINS = 20


def _frame(title: str, x_label: str, y_label: str, x_ticks: Sequence[float], y_ticks: Sequence[float]) -> list[str]:
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        'font-family="DejaVu Sans, Arial, sans-serif" font-size="10">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-size="11">{escape(title)}</text>',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>',
        f'<text x="{_LEFT + plot_w / 2}" y="{HEIGHT - 8}" text-anchor="middle">{escape(x_label)}</text>',
        f'<text x="14" y="{_TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_TOP + plot_h / 2})">{escape(y_label)}</text>',
    ]
    x_low, x_high, y_low, y_high = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    for tick in x_ticks:
        x = _LEFT + (tick - x_low) / ((x_high - x_low) or 1) * plot_w
        out.append(f'<text class="x-tick" x="{x:.1f}" y="{_TOP + plot_h + 13}" text-anchor="middle">{tick:g}</text>')
    for tick in y_ticks:
        y = _TOP + plot_h - (tick - y_low) / ((y_high - y_low) or 1) * plot_h
        out.append(f'<text class="y-tick" x="{_LEFT - 4}" y="{y + 3:.1f}" text-anchor="end">{tick:g}</text>')
    return out


def predicted_vs_actual_svg(metrics: RegressionTestMetrics, output: int = 0) -> str:
    """Test predictions (y) against the true values (x) of one output, with the identity line."""
    true = np.asarray(metrics.y_true, dtype=float)[:, output]
    pred = np.asarray(metrics.y_pred, dtype=float)[:, output]
    finite = np.isfinite(true) & np.isfinite(pred)
    values = np.concatenate([true[finite], pred[finite]]) if finite.any() else np.array([0.0, 1.0])
    ticks = nice_ticks(float(values.min()), float(values.max()))
    low, high = min(ticks[0], float(values.min())), max(ticks[-1], float(values.max()))
    ticks = [t for t in ticks if low <= t <= high] or [low, high]
    row = metrics.per_output[output]
    title = f"test: predicted vs actual ({row.name}), R² {row.r2:.3f}, RMSE {row.rmse:.4g}"
    out = _frame(title, f"actual {row.name}", f"predicted {row.name}", [low, *ticks, high], [low, *ticks, high])
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    span = (high - low) or 1.0

    def at(x: float, y: float) -> tuple[float, float]:
        return _LEFT + (x - low) / span * plot_w, _TOP + plot_h - (y - low) / span * plot_h

    (x0, y0), (x1, y1) = at(low, low), at(high, high)
    out.append(f'<line class="identity" x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" stroke="#888" '
               'stroke-dasharray="4 3"/>')  # fmt: skip
    for x, y in zip(true[finite], pred[finite], strict=True):
        cx, cy = at(float(x), float(y))
        out.append(f'<circle class="point" cx="{cx:.1f}" cy="{cy:.1f}" r="2.5" fill="#1f77b4" fill-opacity="0.6"/>')
    out.append("</svg>")
    return "\n".join(out)


def residual_histogram_svg(metrics: RegressionTestMetrics, output: int = 0) -> str:
    """Histogram of the test residuals (predicted - actual) of one output."""
    residuals = (np.asarray(metrics.y_pred, dtype=float) - np.asarray(metrics.y_true, dtype=float))[:, output]
    residuals = residuals[np.isfinite(residuals)]
    if not len(residuals):
        residuals = np.zeros(1)
    counts, edges = np.histogram(residuals, bins=_BINS)
    row = metrics.per_output[output]
    x_ticks = [float(edges[0]), float(edges[-1])]
    y_ticks = nice_ticks(0.0, float(max(counts.max(), 1)))
    title = f"test residuals ({row.name}): mean {residuals.mean():.3g}, MAE {row.mae:.4g}"
    out = _frame(title, "predicted - actual", "rows", x_ticks, [0.0, *y_ticks[1:]])
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    top = y_ticks[-1] or 1.0
    width = plot_w / _BINS
    for index, count in enumerate(counts):
        height = count / top * plot_h
        out.append(
            f'<rect class="bar" x="{_LEFT + index * width:.1f}" y="{_TOP + plot_h - height:.1f}" '
            f'width="{max(width - 1, 0.5):.1f}" height="{height:.1f}" fill="#1f77b4"/>'
        )
    if edges[0] < 0 < edges[-1]:
        zero = _LEFT + (0 - edges[0]) / (edges[-1] - edges[0]) * plot_w
        out.append(f'<line x1="{zero:.1f}" y1="{_TOP}" x2="{zero:.1f}" y2="{_TOP + plot_h}" stroke="#d62728"/>')
    assert math.isfinite(float(top))
    out.append("</svg>")
    return "\n".join(out)
