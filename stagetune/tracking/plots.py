"""Matplotlib figures logged as PNG artifacts (Agg backend: no display needed).

Margins are fixed in inches instead of `layout="constrained"`: the constrained solver measures every
tick label twice per draw, about half of a figure's CPU time (bench/README.md). These figures are
drawn once per trial, so their cost is part of the search's overhead.
"""

from collections.abc import Iterable, Sequence

from matplotlib.figure import Figure

from schemas.results import EpochRecord, LrRangePoint

# Margins in inches: room for tick and axis labels (left, bottom), the axes' titles (top), between panels.
LEFT_IN, RIGHT_IN, BOTTOM_IN, TOP_IN, GAP_IN = 0.62, 0.12, 0.46, 0.32, 0.62
_SUPTITLE_IN = 0.26
_CHAR_EM = 0.55  # mean advance of a DejaVu Sans character, in em: label widths without drawing them


def framed_figure(
    width: float,
    height: float,
    columns: int = 1,
    *,
    suptitle: str | None = None,
    left: float = LEFT_IN,
    right: float = RIGHT_IN,
    bottom: float = BOTTOM_IN,
    top: float = TOP_IN,
    gap: float = GAP_IN,
) -> Figure:
    """A figure of `columns` side-by-side axes with fixed margins in inches (cheap to draw).

    `layout="constrained"` finds margins by measuring every label, drawing the figure twice; here
    the caller sizes the margins (`text_width_in` for labels of varying length).
    """
    figure = Figure(figsize=(width, height))
    top += _SUPTITLE_IN if suptitle else 0.0
    panel = (width - left - right - gap * (columns - 1)) / columns
    figure.subplots_adjust(
        left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height, wspace=gap / panel
    )
    if suptitle:
        figure.suptitle(suptitle, y=1 - 0.06 / height, va="top")
    return figure


def text_width_in(texts: Iterable[str], fontsize: float = 10.0) -> float:
    """Estimated width in inches of the longest of `texts` at `fontsize` points (0 when there are none)."""
    return max((len(text) for text in texts), default=0) * _CHAR_EM * fontsize / 72


def learning_curve_figure(history: Sequence[EpochRecord], title: str) -> Figure:
    """Train and validation loss (left) and the task's score (accuracy, or R²) (right) against epoch."""
    figure = framed_figure(8, 3.2, columns=2, suptitle=title)
    loss_axes, acc_axes = figure.subplots(1, 2)
    epochs = [r.epoch for r in history]
    score = history[0].score_pair()[0] if history else "accuracy"
    loss_axes.plot(epochs, [r.train_loss for r in history], marker="o", markersize=4, label="train")
    acc_axes.plot(epochs, [r.score_pair()[1] for r in history], marker="o", markersize=4, label="train")
    val = [r for r in history if r.val_loss is not None]
    if val:
        loss_axes.plot([r.epoch for r in val], [r.val_loss for r in val], marker="s", markersize=4, label="validation")
        acc_axes.plot(
            [r.epoch for r in val], [r.score_pair()[2] for r in val], marker="s", markersize=4, label="validation"
        )
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_axes.set(xlabel="epoch", ylabel=score, title=score)
    if score == "accuracy":
        acc_axes.set(ylim=(0, 1.02))
    for axes in (loss_axes, acc_axes):
        axes.grid(alpha=0.3)
    # Fixed corners: loc="best" tries every position against every plotted point.
    loss_axes.legend(loc="upper right", fontsize=8)
    acc_axes.legend(loc="lower right", fontsize=8)
    return figure


def step_curve_figure(losses: Sequence[float], title: str, ylabel: str = "training loss") -> Figure:
    """Loss against optimizer step (the sanity stage's overfit test)."""
    figure = framed_figure(5, 3.6)
    axes = figure.subplots()
    axes.plot(range(1, len(losses) + 1), losses)
    axes.set(xlabel="step", ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    return figure


def lr_range_figure(points: Sequence[LrRangePoint], suggestion: float | None) -> Figure:
    """Smoothed loss against learning rate (log axis), with the suggested rate marked."""
    figure = framed_figure(5, 3.6)
    axes = figure.subplots()
    axes.plot([p.lr for p in points], [p.smoothed_loss for p in points], label="smoothed loss")
    axes.plot([p.lr for p in points], [p.loss for p in points], alpha=0.3, label="loss")
    if suggestion is not None:
        axes.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested {suggestion:.2g}")
    axes.set(xscale="log", xlabel="learning rate", ylabel="loss", title="LR range test")
    if points:  # the raw loss explodes at the end of the ramp: keep the informative part in view
        axes.set_ylim(0, 2 * max(p.smoothed_loss for p in points[: max(1, len(points) // 2)]))
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize=8)
    return figure
