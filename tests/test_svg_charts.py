"""The sample and sanity stages' SVG charts: well-formed, every finite point drawn in order, log axis, bars."""

import itertools
import math
import xml.etree.ElementTree as ET

from schemas.results import LrRangePoint
from stagetune.tracking.svg_charts import HEIGHT, WIDTH, bar_chart_svg, lr_range_svg, step_curve_svg

NS = {"svg": "http://www.w3.org/2000/svg"}


def _points(svg: str) -> dict[str, list[tuple[float, float]]]:
    root = ET.fromstring(svg)
    return {
        line.attrib["data-series"]: [tuple(float(v) for v in p.split(",")) for p in line.attrib["points"].split()]
        for line in root.iter("{http://www.w3.org/2000/svg}polyline")
    }


def test_a_falling_loss_is_drawn_through_every_finite_step_inside_the_figure() -> None:
    losses = [2.3, 1.5, math.nan, 0.7, 0.2, math.inf, 0.05]
    [(name, points)] = _points(step_curve_svg(losses, "overfit <test> & co")).items()

    assert name == "loss"
    assert len(points) == 5  # NaN and inf left out
    xs, ys = [x for x, _ in points], [y for _, y in points]
    assert xs == sorted(xs)
    assert len(set(xs)) == 5
    assert ys == sorted(ys)  # SVG's y points down: a falling loss climbs
    assert all(0 <= x <= WIDTH and 0 <= y <= HEIGHT for x, y in points)


def test_the_lr_range_chart_spaces_rates_by_decade_and_marks_the_suggestion() -> None:
    lrs = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    points = [LrRangePoint(lr=lr, loss=2.0 - i * 0.3, smoothed_loss=2.0 - i * 0.25) for i, lr in enumerate(lrs)]
    svg = lr_range_svg(points, suggestion=1e-3)

    smoothed = _points(svg)["smoothed loss"]
    gaps = {round(b[0] - a[0], 1) for a, b in itertools.pairwise(smoothed)}
    assert len(gaps) == 1  # one decade, one equal step: a log axis
    assert gaps.pop() > 0
    root = ET.fromstring(svg)
    [marker] = [line for line in root.iter("{http://www.w3.org/2000/svg}line") if "data-marker" in line.attrib]
    assert float(marker.attrib["x1"]) == smoothed[2][0]  # at 1e-3, the third point's x
    assert "suggested 0.001" in [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]


def test_bars_stand_for_each_class_and_series_with_heights_in_proportion() -> None:
    series = {"train (full)": {"a": 40, "b": 10}, "sampled": {"a": 20, "b": 10}, "per epoch (none)": {"a": 20}}
    root = ET.fromstring(bar_chart_svg(["a", "b"], series, "class distribution", "rows"))

    bars = {
        (group.attrib["data-series"], rect.attrib["data-category"]): float(rect.attrib["height"])
        for group in root.iterfind("svg:g", NS)
        for rect in group.iterfind("svg:rect", NS)
    }
    assert set(bars) == {(s, c) for s in series for c in ("a", "b")}
    assert bars[("per epoch (none)", "b")] == 0.0  # missing counts as zero
    assert math.isclose(bars[("train (full)", "a")], 4 * bars[("train (full)", "b")], rel_tol=0.02)
    assert math.isclose(bars[("sampled", "a")], 2 * bars[("sampled", "b")], rel_tol=0.02)
