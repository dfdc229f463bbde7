"""Matplotlib figures logged as PNG artifacts (Agg backend: no display needed)."""

from collections.abc import Sequence

from matplotlib.figure import Figure

from schemas.results import EpochRecord, LrRangePoint


def learning_curve_figure(history: Sequence[EpochRecord], title: str) -> Figure:
    """Train and validation loss (left) and accuracy (right) against epoch, on one figure."""
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    loss_axes, acc_axes = figure.subplots(1, 2)
    epochs = [r.epoch for r in history]
    loss_axes.plot(epochs, [r.train_loss for r in history], marker="o", label="train")
    acc_axes.plot(epochs, [r.train_acc for r in history], marker="o", label="train")
    val = [r for r in history if r.val_loss is not None]
    if val:
        loss_axes.plot([r.epoch for r in val], [r.val_loss for r in val], marker="s", label="validation")
        acc_axes.plot([r.epoch for r in val], [r.val_acc for r in val], marker="s", label="validation")
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_axes.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for axes in (loss_axes, acc_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    return figure


def step_curve_figure(losses: Sequence[float], title: str, ylabel: str = "training loss") -> Figure:
    """Loss against optimizer step (the sanity stage's overfit test)."""
    figure = Figure(figsize=(5, 3.6), layout="constrained")
    axes = figure.subplots()
    axes.plot(range(1, len(losses) + 1), losses)
    axes.set(xlabel="step", ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    return figure


def lr_range_figure(points: Sequence[LrRangePoint], suggestion: float | None) -> Figure:
    """Smoothed loss against learning rate (log axis), with the suggested rate marked."""
    figure = Figure(figsize=(5, 3.6), layout="constrained")
    axes = figure.subplots()
    axes.plot([p.lr for p in points], [p.smoothed_loss for p in points], label="smoothed loss")
    axes.plot([p.lr for p in points], [p.loss for p in points], alpha=0.3, label="loss")
    if suggestion is not None:
        axes.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested {suggestion:.2g}")
    axes.set(xscale="log", xlabel="learning rate", ylabel="loss", title="LR range test")
    if points:  # the raw loss explodes at the end of the ramp: keep the informative part in view
        axes.set_ylim(0, 2 * max(p.smoothed_loss for p in points[: max(1, len(points) // 2)]))
    axes.grid(alpha=0.3)
    axes.legend()
    return figure
