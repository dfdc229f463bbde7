"""The report's own figures, as SVG text.

Stage figures that already exist (optimisation history, parallel coordinates, importances) are reused
from where the stages draw them; these are the ones only the report needs. Drawn with matplotlib each
took ~145 ms of text layout on 2 cores, about 2 s per report; as SVG text well under a millisecond
(bench/README.md, "Profiles").
"""

import math
from collections.abc import Sequence

from schemas.final import FinalResult, TestMetrics
from schemas.results import EpochRecord, LrRangePoint, SampleResult, SanityResult
from schemas.search import ParamChange, TrialRecord
from schemas.search_space import CategoricalParam, Param
from stagetune.report.svg_scatter import STATE_COLOURS
from stagetune.tracking.svg_curves import PALETTE, Categories, Panel, Scale, svg_document

_CHAR_PX = 6.2  # mean advance of a 10 px DejaVu Sans character: label widths without drawing them
_BOUNDED = (0.0, 1.02)  # the accuracy axis


def overfit_svg(sanity: SanityResult) -> str:
    """Overfit-test loss per step, with ln(C) and the measured initial loss marked."""
    losses = [(float(step), loss) for step, loss in enumerate(sanity.overfit_losses, start=1)]
    extra = [sanity.expected_initial_loss, sanity.initial_loss]
    panel = Panel((70, 36, 420, 250), Scale([0.0, len(losses)]), Scale([v for _, v in losses] + extra))
    panel.line(losses, PALETTE[0], "overfit training loss")
    regression = sanity.task == "regression"
    panel.rule(sanity.expected_initial_loss, "#7f7f7f", "zero output (target mean)" if regression else "ln C (chance)")
    if math.isfinite(sanity.initial_loss):
        panel.dots([(0.0, sanity.initial_loss)], "#d62728", "initial loss")
    score = "train R²" if regression else "train accuracy"
    panel.frame(f"overfit test: {score} {sanity.overfit_train_acc:.2f}", "step", "loss")
    panel.legend()
    return svg_document(510, 330, [panel.svg()])


def best_curves_svg(curves: Sequence[tuple[str, Sequence[EpochRecord]]]) -> str:
    """Train (solid) and validation (dashed) loss and score of a few trials, one colour per trial."""
    score = _score_name([h for _, h in curves])
    records = [r for _, history in curves for r in history]
    epochs = Scale([float(r.epoch) for r in records])
    losses = [v for r in records for v in (r.train_loss, r.val_loss) if v is not None]
    scores = [v for r in records for v in r.score_pair()[1:] if v is not None]
    loss = Panel((70, 40, 330, 250), epochs, Scale(losses))
    acc = Panel((480, 40, 330, 250), epochs, Scale(scores, fixed=_BOUNDED if score == "accuracy" else None))
    for index, (label, history) in enumerate(curves):
        colour = PALETTE[index % len(PALETTE)]
        train = [(float(r.epoch), r.train_loss) for r in history]
        val = [(float(r.epoch), r.val_loss) for r in history if r.val_loss is not None]
        loss.line(train, colour)
        loss.line(val, colour, dashed=True, markers=True)
        acc.line(
            [(float(r.epoch), s) for r in history if (s := r.score_pair()[1]) is not None], colour, f"{label} train"
        )
        acc.line(
            [(float(r.epoch), s) for r in history if (s := r.score_pair()[2]) is not None],
            colour,
            f"{label} val",
            dashed=True,
            markers=True,
        )
    loss.frame("loss (solid: train, dashed: validation)", "epoch", "loss")
    acc.frame(score, "epoch", score)
    acc.legend("lower right")
    return svg_document(830, 340, [loss.svg(), acc.svg()])


def narrowing_svg(changes: Sequence[ParamChange]) -> str:
    """Old (grey) and new (blue) range of each numeric parameter, in units of the old width (log where log)."""
    rows = [(c, _bounds(c.old, c.scale), _bounds(c.new, c.scale)) for c in changes]
    numeric = [(c, old, new) for c, old, new in rows if old is not None and new is not None and c.action != "fixed"]
    shares = []
    for change, (old_low, old_high), (new_low, new_high) in numeric:
        span = (old_high - old_low) or 1.0
        shares.append((change, (new_low - old_low) / span, (new_high - old_low) / span))
    names = [c.name for c, _, _ in shares]
    left = max(70.0, _CHAR_PX * max((len(n) for n in names), default=0) + 16)
    height = 30 * max(len(names), 2)
    low = min([-0.1, *(start for _, start, _ in shares)])
    high = max([1.4, *(end + 0.4 for _, _, end in shares)])
    panel = Panel((left, 36, 640, height), Scale([], fixed=(low, high)), Categories(names or [""]))
    for row, (change, start, end) in enumerate(shares):
        panel.bar(float(row), 0.0, 1.0, 0.6, "#d3d3d3", horizontal=True)
        panel.bar(float(row), start, max(end, start + 0.01), 0.35, PALETTE[0], horizontal=True)
        panel.text(max(1.02, end + 0.02), float(row), change.action)
    for edge in (0.0, 1.0):
        panel.rule(edge, "black", vertical=True, dashed=False)
    panel.frame(
        "narrowing: old range (grey) -> new range (blue)",
        "position in the old range (0 = old low, 1 = old high; log space for log parameters)",
    )
    return svg_document(left + 660, height + 90, [panel.svg()])


def final_curves_svg(final: FinalResult) -> str:
    """Final training: loss, score and learning rate per epoch, the kept (best) epoch marked."""
    history = final.history
    score = _score_name([history])
    epochs = Scale([float(r.epoch) for r in history])
    val = [r for r in history if r.val_loss is not None]
    losses = [v for r in history for v in (r.train_loss, r.val_loss) if v is not None]
    scores = [v for r in history for v in r.score_pair()[1:] if v is not None]
    loss = Panel((70, 40, 250, 250), epochs, Scale(losses))
    acc = Panel((400, 40, 250, 250), epochs, Scale(scores, fixed=_BOUNDED if score == "accuracy" else None))
    lr = Panel((730, 40, 250, 250), epochs, Scale([r.lr for r in history], log=True))
    loss.line([(float(r.epoch), r.train_loss) for r in history], PALETTE[0], "train", markers=True)
    loss.line(
        [(float(r.epoch), r.val_loss) for r in val if r.val_loss is not None], PALETTE[1], "validation", markers=True
    )
    acc.line([(float(r.epoch), s) for r in history if (s := r.score_pair()[1]) is not None], PALETTE[0], markers=True)
    acc.line([(float(r.epoch), s) for r in val if (s := r.score_pair()[2]) is not None], PALETTE[1], markers=True)
    lr.line([(float(r.epoch), r.lr) for r in history], PALETTE[2], step=True)
    for panel in (loss, acc, lr):
        if final.best_epoch is not None:
            label = f"kept epoch {final.best_epoch}" if panel is loss else ""
            panel.rule(float(final.best_epoch), "#d62728", label, vertical=True)
    loss.frame("loss", "epoch", "loss")
    acc.frame(score, "epoch", score)
    lr.frame(f"LR schedule ({final.stopped})", "epoch", "learning rate")
    loss.legend()
    return svg_document(1000, 340, [loss.svg(), acc.svg(), lr.svg()])


def trial_states_svg(trials: Sequence[TrialRecord], max_epochs: int) -> str:
    """Epochs each trial ran, coloured by state: where pruning stopped the pruned ones."""
    numbers = [float(t.number) for t in trials] or [0.0]
    panel = Panel(
        (70, 36, 540, 250),
        Scale([min(numbers) - 0.5, max(numbers) + 0.5]),
        Scale([0.0, float(max_epochs), *(float(t.epochs_run) for t in trials)]),
    )
    entries = []
    for state, colour in STATE_COLOURS.items():
        chosen = [t for t in trials if t.state == state]
        for trial in chosen:
            panel.bar(float(trial.number), 0.0, float(trial.epochs_run), 0.8, colour)
        if chosen:
            entries.append((f"{state.lower()} ({len(chosen)})", colour, "bar"))
    panel.rule(float(max_epochs), "black")
    entries.append((f"budget {max_epochs} epochs", "black", "dash"))
    panel.frame("pruned vs completed trials", "trial", "epochs run")
    panel.legend("lower right", entries)
    return svg_document(630, 330, [panel.svg()])


def confusion_matrix_svg(metrics: TestMetrics) -> str:
    """The confusion matrix with counts in the cells, coloured by share of the true class (row)."""
    counts = metrics.confusion_matrix
    names = metrics.class_names
    size = len(names)
    cell = max(14.0, min(48.0, 480 / max(size, 1)))
    label = _CHAR_PX * max((len(n) for n in names), default=0)
    left, top = label + 60, 40
    font = 10 if size <= 10 else max(6, 10 - (size - 10) // 3)
    out = []
    for row in range(size):
        total = sum(counts[row]) or 1
        for column in range(size):
            share = counts[row][column] / total
            x, y = left + column * cell, top + row * cell
            shade = _blues(share)
            ink = "white" if share > 0.5 else "black"
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{cell:.1f}" height="{cell:.1f}" fill="{shade}"/>')
            out.append(
                f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + font / 3:.1f}" text-anchor="middle" '
                f'font-size="{font}" fill="{ink}">{counts[row][column]}</text>'
            )
    side = cell * size
    x_names = Categories(names)
    axes = Panel((left, top, side, side), x_names, Categories(names[::-1]))
    axes.frame("", "", "true class", rotate_x=size > 6)
    bottom = top + side + (0.5 * label + 30 if size > 6 else 30)
    title = (
        f"test: accuracy {metrics.accuracy:.3f}, balanced accuracy {metrics.balanced_accuracy:.3f}, "
        f"macro F1 {metrics.macro_f1:.3f} (n={metrics.n_samples})"
    )
    footer = f'<text x="{left + side / 2:.1f}" y="{bottom:.1f}" text-anchor="middle">predicted class</text>'
    width = max(left + side + 30, 7.0 * len(title))
    return svg_document(width, bottom + 16, [axes.svg(), '<g class="cells">', *out, "</g>", footer], title=title)


def _blues(share: float) -> str:
    # White to matplotlib's darkest "Blues" (8, 48, 107), linear in the share.
    red, green, blue = (round(255 + (dark - 255) * min(max(share, 0.0), 1.0)) for dark in (8, 48, 107))
    return f"#{red:02x}{green:02x}{blue:02x}"


def _bounds(param: Param, scale: str | None) -> tuple[float, float] | None:
    # A numeric range on the axis it is sampled on (log10 for log parameters); None for choices.
    if isinstance(param, CategoricalParam):
        return None
    if scale == "log" and param.low > 0:
        return math.log10(param.low), math.log10(param.high)
    return float(param.low), float(param.high)


def _score_name(histories: Sequence[Sequence[EpochRecord]]) -> str:
    """The bounded score the curves show: accuracy, or R² for regression."""
    for history in histories:
        if history:
            return history[0].score_pair()[0]
    return "accuracy"


def lr_range_svg(points: Sequence[LrRangePoint], suggestion: float | None) -> str:
    """Smoothed loss against learning rate (log axis), with the suggested rate marked."""
    # The raw loss explodes at the end of the ramp: keep the informative part in view.
    first_half = points[: max(1, len(points) // 2)]
    top = 2 * max((p.smoothed_loss for p in first_half if math.isfinite(p.smoothed_loss)), default=1.0)
    panel = Panel((70, 36, 420, 250), Scale([p.lr for p in points], log=True), Scale([], fixed=(0.0, top or 1.0)))
    panel.line([(p.lr, min(p.loss, top)) for p in points], PALETTE[0], "loss", opacity=0.3)
    panel.line([(p.lr, min(p.smoothed_loss, top)) for p in points], PALETTE[0], "smoothed loss")
    if suggestion is not None:
        panel.rule(suggestion, "#d62728", f"suggested {suggestion:.2g}", vertical=True)
    panel.frame("LR range test", "learning rate", "loss")
    panel.legend("upper left")
    return svg_document(510, 330, [panel.svg()])


def class_distribution_svg(result: SampleResult) -> str:
    """Per-class bars: full training split, after sampling, and what one epoch sees after rebalancing."""
    series = {
        "train (full)": result.class_counts_train,
        "sampled": result.class_counts_sampled,
        f"per epoch ({result.rebalance})": result.class_counts_rebalanced,
    }
    labels = list(result.class_counts_train)
    counts = [float(c.get(label, 0)) for c in series.values() for label in labels]
    width = max(420.0, 40 * len(labels) + 120)
    # Headroom above the tallest bar for the legend.
    panel = Panel((70, 36, width - 90, 250), Categories(labels), Scale([0.0, *counts, 1.4 * max(counts, default=1.0)]))
    bar = 0.8 / len(series)
    entries = []
    for offset, (name, per_class) in enumerate(series.items()):
        colour = PALETTE[offset]
        for index, label in enumerate(labels):
            panel.bar(index + (offset - 1) * bar, 0.0, float(per_class.get(label, 0)), bar, colour)
        entries.append((name, colour, "bar"))
    panel.frame("class distribution", "class", "rows", rotate_x=len(labels) > 8)
    panel.legend("upper right", entries)
    return svg_document(width, 350, [panel.svg()])
