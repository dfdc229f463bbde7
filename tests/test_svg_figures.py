"""The study plots and report figures drawn as SVG text: valid XML, every point where it belongs, marks and labels."""

import math
import xml.etree.ElementTree as ET

from schemas.hyperparams import HyperParams
from schemas.results import EpochRecord, SanityResult
from schemas.search import TrialRecord
from stagetune.report.figures import best_curves_svg, overfit_svg, trial_states_svg
from stagetune.tracking.study_plots import history_svg, importances_svg, parallel_coordinates_svg
from stagetune.tracking.svg_curves import Panel, Scale, viridis

SVG = "{http://www.w3.org/2000/svg}"


def trial(number: int, state: str, value: float | None, **params: float) -> TrialRecord:
    return TrialRecord(number=number, state=state, value=value, hyperparams=HyperParams(), params=params, epochs_run=3)  # type: ignore[arg-type]


def texts(svg: str) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg).iter(f"{SVG}text")]


def polylines(svg: str) -> list[list[tuple[float, float]]]:
    root = ET.fromstring(svg)
    return [
        [(float(x), float(y)) for x, y in (p.split(",") for p in line.attrib["points"].split())]
        for line in root.iter(f"{SVG}polyline")
    ]


def test_history_marks_every_finite_trial_by_state_and_steps_the_best_so_far_down_when_minimising() -> None:
    trials = [
        trial(0, "COMPLETE", 0.9),
        trial(1, "PRUNED", 1.4),
        trial(2, "COMPLETE", 0.5),
        trial(3, "FAIL", None),
        trial(4, "COMPLETE", 0.7),
    ]
    svg = history_svg(trials, "val/loss", minimize=True)
    root = ET.fromstring(svg)

    assert len(list(root.iter(f"{SVG}circle"))) == 3  # the completed trials; the pruned one is a cross
    assert len([p for p in root.iter(f"{SVG}path") if "l7,7" in p.attrib["d"]]) == 1
    (best,) = polylines(svg)
    ys = [y for _, y in best]
    assert ys == sorted(ys)  # SVG's y points down: a falling best loss climbs, and never comes back
    assert len(set(ys)) == 2  # 0.9, then 0.5 kept through trial 4's 0.7
    assert {"optimisation history", "trial", "val/loss", "best so far", "complete", "pruned"} <= set(texts(svg))


def test_parallel_coordinates_draws_one_line_per_completed_trial_the_best_brightest() -> None:
    trials = [
        trial(0, "COMPLETE", 0.2, learning_rate=1e-3, dropout=0.1),
        trial(1, "COMPLETE", 0.9, learning_rate=1e-2, dropout=0.4),
        trial(2, "PRUNED", 0.1, learning_rate=1e-1, dropout=0.2),
    ]
    svg = parallel_coordinates_svg(trials, "val/acc", minimize=False)
    root = ET.fromstring(svg)
    lines = list(root.iter(f"{SVG}polyline"))

    assert len(lines) == 2
    assert [line.attrib["stroke"] for line in lines] == [viridis(0.0), viridis(1.0)]  # best drawn last, on top
    assert {"dropout", "learning_rate"} <= set(texts(svg))
    empty = parallel_coordinates_svg([trial(0, "FAIL", None)], "val/acc", minimize=False)
    assert "no completed trials with numeric parameters" in texts(empty)


def test_importance_bars_are_as_long_as_the_importances() -> None:
    svg = importances_svg({"learning_rate": 0.6, "dropout": 0.3, "width": 0.1}, x_label="importance")
    bars = [r for r in ET.fromstring(svg).iter(f"{SVG}rect") if r.attrib.get("fill") == "#1f77b4"]
    widths = [float(r.attrib["width"]) for r in bars]

    assert len(widths) == 3
    assert math.isclose(widths[2] / widths[0], 6.0, rel_tol=0.02)  # drawn bottom-up: width first, learning_rate last
    assert {"learning_rate", "dropout", "width", "importance"} <= set(texts(svg))


def test_trial_states_bars_reach_each_trials_epochs_and_the_budget_is_ruled() -> None:
    trials = [trial(0, "COMPLETE", 0.9), trial(1, "PRUNED", 1.0), trial(2, "COMPLETE", 0.8)]
    trials[1] = trials[1].model_copy(update={"epochs_run": 1})
    svg = trial_states_svg(trials, max_epochs=3)
    rects = list(ET.fromstring(svg).iter(f"{SVG}rect"))
    # Bars, then the legend's 8 px swatches: trial 1 ran 1 of 3 epochs, a third of the others' height.
    bars = [float(r.attrib["height"]) for r in rects if r.attrib.get("fill", "").startswith("#")][:3]

    assert math.isclose(bars[0], bars[1])
    assert math.isclose(bars[2] * 3, bars[0], rel_tol=0.01)
    assert {"complete (2)", "pruned (1)", "budget 3 epochs"} <= set(texts(svg))


def test_curves_and_the_overfit_test_keep_points_inside_their_panels() -> None:
    history = [
        EpochRecord(
            epoch=i,
            train_loss=2 / (i + 1),
            train_acc=0.3 + 0.1 * i,
            val_loss=2.2 / (i + 1),
            val_acc=0.25 + 0.1 * i,
            lr=1e-3,
            seconds=0.1,
        )
        for i in range(5)
    ]
    curves = best_curves_svg([("#3", history), ("#7", history[:3])])
    assert len(polylines(curves)) == 8  # two trials x (train, val) x (loss, score)
    sanity = SanityResult.model_construct(
        task="classification",
        expected_initial_loss=math.log(10),
        initial_loss=2.31,
        overfit_train_acc=1.0,
        overfit_losses=[2.3, 1.2, 0.4, 0.05],
    )
    overfit = overfit_svg(sanity)
    for svg in (curves, overfit):
        root = ET.fromstring(svg)
        width, height = float(root.attrib["width"]), float(root.attrib["height"])
        points = [p for line in polylines(svg) for p in line]
        assert points
        assert all(0 <= x <= width and 0 <= y <= height for x, y in points)
    assert {"ln C (chance)", "initial loss", "step"} <= set(texts(overfit))


def test_log_scale_places_decades_evenly_and_leaves_out_non_positive_values() -> None:
    panel = Panel((0, 0, 300, 100), Scale([1e-4, 1e-2], log=True), Scale([0.0, 1.0]))

    assert [label for label, _ in panel.x.ticks] == ["0.0001", "0.001", "0.01"]
    assert panel.at(1e-3, 0.5) == (150.0, 50.0)
    assert panel.at(0.0, 0.5) is None
