"""The per-trial learning-curve SVG: valid XML, one line per series through every finite epoch, round ticks."""

import itertools
import math
import xml.etree.ElementTree as ET

import pytest

from schemas.results import EpochRecord
from stagetune.tracking.svg_curves import HEIGHT, learning_curve_svg, nice_ticks

NS = {"svg": "http://www.w3.org/2000/svg"}


def history(epochs: int, val: bool = True) -> list[EpochRecord]:
    return [
        EpochRecord(
            epoch=i,
            train_loss=2.3 / (i + 1),
            train_acc=min(1.0, 0.2 + 0.1 * i),
            val_loss=2.4 / (i + 1) if val else None,
            val_acc=min(1.0, 0.15 + 0.1 * i) if val else None,
            lr=1e-3,
            seconds=0.1,
        )
        for i in range(epochs)
    ]


def _lines(svg: str) -> dict[tuple[str, str], list[tuple[float, float]]]:
    root = ET.fromstring(svg)
    found = {}
    for panel in root.iterfind("svg:g", NS):
        for line in panel.iterfind("svg:polyline", NS):
            points = [tuple(float(v) for v in p.split(",")) for p in line.attrib["points"].split()]
            found[(panel.attrib["data-name"], line.attrib["data-series"])] = points
    return found


def test_each_panel_draws_train_and_validation_through_every_epoch() -> None:
    lines = _lines(learning_curve_svg(history(6), "coarse trial 3 (COMPLETE)"))

    assert set(lines) == {(p, s) for p in ("loss", "accuracy") for s in ("train", "validation")}
    for points in lines.values():
        xs = [x for x, _ in points]
        assert len(points) == 6
        assert xs == sorted(xs)
        assert len(set(xs)) == 6
    # SVG's y axis points down: a falling loss climbs in y, a rising accuracy falls in y.
    loss_y = [y for _, y in lines[("loss", "train")]]
    acc_y = [y for _, y in lines[("accuracy", "train")]]
    assert loss_y == sorted(loss_y)
    assert acc_y == sorted(acc_y, reverse=True)
    assert all(0 <= y <= HEIGHT for points in lines.values() for _, y in points)


def test_title_is_escaped_and_missing_or_non_finite_values_are_left_out() -> None:
    records = history(4, val=False)
    records[2] = records[2].model_copy(update={"train_loss": math.nan})
    svg = learning_curve_svg(records, "refine trial <7> & co")

    root = ET.fromstring(svg)  # well-formed despite the title's characters
    assert "refine trial <7> & co" in [t.text for t in root.iterfind("svg:text", NS)]
    lines = _lines(svg)
    assert set(lines) == {("loss", "train"), ("accuracy", "train")}
    assert len(lines[("loss", "train")]) == 3
    assert len(lines[("accuracy", "train")]) == 4


def test_a_single_epoch_draws_a_point_not_a_division_by_zero() -> None:
    lines = _lines(learning_curve_svg(history(1), "final"))
    assert all(len(points) == 1 for points in lines.values())
    assert all(math.isfinite(v) for points in lines.values() for p in points for v in p)


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.02), (0.013, 2.31), (3.0, 3.0), (-1.5, 40.0), (0.0, 9.0)])
def test_ticks_are_round_evenly_spaced_and_cover_the_range(low: float, high: float) -> None:
    ticks = nice_ticks(low, high)
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1
    step = steps.pop()
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert round(mantissa, 6) in (1.0, 2.0, 5.0)
    assert ticks[0] <= low
    assert ticks[-1] >= high - 1e-9
    assert 3 <= len(ticks) <= 8
