"""The report's objective-against-hyperparameter scatter as SVG: dots where the values say, rings, axes."""

import itertools
import math
import xml.etree.ElementTree as ET

from stagetune.report.svg_scatter import HEIGHT, WIDTH, param_scatter_svg

NS = {"svg": "http://www.w3.org/2000/svg"}


def _dots(svg: str) -> dict[str, list[tuple[float, float]]]:
    root = ET.fromstring(svg)
    return {
        group.attrib["data-state"]: [(float(c.attrib["cx"]), float(c.attrib["cy"])) for c in group]
        for group in root.iterfind("svg:g[@data-state]", NS)
    }


def _rings(svg: str) -> dict[str, tuple[float, float]]:
    root = ET.fromstring(svg)
    found = {}
    for group in root.iterfind("svg:g[@data-trial]", NS):
        circle = group.find("svg:circle", NS)
        assert circle is not None
        found[group.attrib["data-trial"]] = (float(circle.attrib["cx"]), float(circle.attrib["cy"]))
    return found


def _texts(svg: str, css_class: str | None = None) -> list[str]:
    """Every text of the figure, or those of one class ("x-tick", "y-tick")."""
    root = ET.fromstring(svg)
    return [t.text or "" for t in root.iterfind("svg:text", NS) if css_class in (None, t.attrib.get("class"))]


def test_log_axis_places_each_decade_equally_apart_and_lower_objective_lower_on_the_page() -> None:
    points = [(1e-4, 0.9, "COMPLETE"), (1e-3, 0.5, "COMPLETE"), (1e-2, 0.1, "COMPLETE"), (1e-1, 0.3, "PRUNED")]
    svg = param_scatter_svg("learning_rate", points, [(1e-2, 0.1, 7)], log=True, objective="val_loss")

    dots = _dots(svg)
    xs = [x for x, _ in dots["COMPLETE"]] + [x for x, _ in dots["PRUNED"]]
    gaps = [b - a for a, b in itertools.pairwise(xs)]
    assert all(g > 0 for g in gaps)
    assert max(gaps) - min(gaps) < 0.5  # one decade = one equal step on a log axis
    ys = {y_value: y for (_, y), y_value in zip(dots["COMPLETE"], (0.9, 0.5, 0.1), strict=True)}
    assert ys[0.1] > ys[0.5] > ys[0.9]  # SVG's y points down: the best (lowest) loss is lowest on the page
    assert _rings(svg) == {"7": dots["COMPLETE"][2]}
    assert {"0.0001", "0.001", "0.01", "0.1"} <= set(_texts(svg, "x-tick"))
    assert "learning_rate (log)" in _texts(svg)
    assert all(0 <= x <= WIDTH and 0 <= y <= HEIGHT for pts in dots.values() for x, y in pts)


def test_choices_sit_on_sorted_categories_and_each_state_has_its_own_colour_group() -> None:
    points = [("sgd", 0.4, "COMPLETE"), ("adam", 0.2, "PRUNED"), ("adamw", 0.3, "FAIL"), ("adam", 0.25, "COMPLETE")]
    svg = param_scatter_svg("optimizer", points, [], log=True, objective="val_loss")  # log is moot for choices

    dots = _dots(svg)
    assert set(dots) == {"COMPLETE", "PRUNED", "FAIL"}
    x_adam_pruned = dots["PRUNED"][0][0]
    x_adamw = dots["FAIL"][0][0]
    x_sgd, x_adam_complete = dots["COMPLETE"][0][0], dots["COMPLETE"][1][0]
    assert x_adam_pruned == x_adam_complete < x_adamw < x_sgd  # adam, adamw, sgd: sorted, one slot each
    assert "optimizer" in _texts(svg)  # no "(log)" for choices
    assert _texts(svg, "x-tick") == ["adam", "adamw", "sgd"]
    assert {"complete", "pruned", "fail"} <= set(_texts(svg))  # legend


def test_values_a_log_axis_cannot_show_are_left_out_and_names_are_escaped() -> None:
    points = [(0.0, 0.5, "COMPLETE"), (1e-3, 0.4, "COMPLETE"), (2e-3, 0.3, "COMPLETE"), (math.nan, 0.2, "COMPLETE")]
    svg = param_scatter_svg("w<d>", points, [(0.0, 0.5, 1)], log=True, objective="loss & co")

    assert len(_dots(svg)["COMPLETE"]) == 2
    assert _rings(svg) == {}  # the ringed trial's value (0) has no place on a log axis
    labels = _texts(svg)
    assert "w<d> (log)" in labels
    assert "loss & co" in labels
    # Less than a decade (0.001-0.002): round values inside it are labelled, not just one power of ten.
    x_ticks = [float(t) for t in _texts(svg, "x-tick")]
    assert len(x_ticks) >= 3
    assert all(0.0009 <= t <= 0.0021 for t in x_ticks)


def test_a_linear_axis_keeps_order_and_constant_values_do_not_divide_by_zero() -> None:
    svg = param_scatter_svg("dropout", [(0.1, 0.5, "COMPLETE"), (0.4, 0.5, "COMPLETE")], [], False, "val_loss")
    (a, ya), (b, yb) = _dots(svg)["COMPLETE"]
    assert a < b
    assert ya == yb
    single = param_scatter_svg("depth", [(3, 0.5, "COMPLETE")], [(3, 0.5, 0)], False, "val_loss")
    ((x, y),) = _dots(single)["COMPLETE"]
    assert math.isfinite(x)
    assert math.isfinite(y)
    assert _rings(single) == {"0": (x, y)}
