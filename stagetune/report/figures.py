"""The report's own figures (matplotlib's Figure API: no pyplot state, safe in worker threads).

Stage figures that already exist (class distribution, LR range test, confusion matrix, optimisation
history, parallel coordinates) are reused from where the stages draw them; these are the ones only
the report needs (its per-hyperparameter scatters are SVG text: stagetune/report/svg_scatter.py).
Margins are fixed (`framed_figure`): constrained layout doubled the cost of each figure.
"""

import math
from collections.abc import Sequence

from matplotlib.figure import Figure

from schemas.final import FinalResult
from schemas.results import EpochRecord, SanityResult
from schemas.search import ParamChange, TrialRecord
from schemas.search_space import CategoricalParam, Param
from stagetune.report.svg_scatter import STATE_COLOURS
from stagetune.tracking.plots import LEFT_IN, framed_figure, text_width_in


def overfit_figure(sanity: SanityResult) -> Figure:
    """Overfit-test loss per step, with ln(C) and the measured initial loss marked."""
    figure = framed_figure(5.2, 3.4)
    axes = figure.subplots()
    steps = range(1, len(sanity.overfit_losses) + 1)
    axes.plot(steps, sanity.overfit_losses, label="overfit training loss")
    regression = sanity.task == "regression"
    expected = "zero output (target mean)" if regression else "ln C (chance)"
    axes.axhline(sanity.expected_initial_loss, color="tab:gray", linestyle="--", label=expected)
    if math.isfinite(sanity.initial_loss):
        axes.scatter([0], [sanity.initial_loss], color="tab:red", zorder=3, label="initial loss")
    score = "train R²" if regression else "train accuracy"
    axes.set(xlabel="step", ylabel="loss", title=f"overfit test: {score} {sanity.overfit_train_acc:.2f}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def best_curves_figure(curves: Sequence[tuple[str, Sequence[EpochRecord]]]) -> Figure:
    """Train (solid) and validation (dashed) loss and accuracy of a few trials, one colour per trial."""
    figure = framed_figure(9, 3.4, columns=2)
    loss_axes, acc_axes = figure.subplots(1, 2)
    for index, (label, history) in enumerate(curves):
        colour = f"C{index}"
        epochs = [r.epoch for r in history]
        loss_axes.plot(epochs, [r.train_loss for r in history], color=colour, label=f"{label} train")
        acc_axes.plot(epochs, [r.score_pair()[1] for r in history], color=colour, label=f"{label} train")
        val = [r for r in history if r.val_loss is not None]
        vx = [r.epoch for r in val]
        loss_axes.plot(vx, [r.val_loss for r in val], color=colour, linestyle="--", marker=".", label=f"{label} val")
        acc_axes.plot(
            vx, [r.score_pair()[2] for r in val], color=colour, linestyle="--", marker=".", label=f"{label} val"
        )
    score = _score_name([h for _, h in curves])
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss (solid: train, dashed: validation)")
    acc_axes.set(xlabel="epoch", ylabel=score, title=score, **({"ylim": (0, 1.02)} if score == "accuracy" else {}))
    for axes in (loss_axes, acc_axes):
        axes.grid(alpha=0.3)
    acc_axes.legend(fontsize=7, loc="lower right")
    return figure


def narrowing_figure(changes: Sequence[ParamChange]) -> Figure:
    """Old (grey) and new (blue) range of each numeric parameter, in units of the old width (log where log)."""
    rows = [(c, _bounds(c.old, c.scale), _bounds(c.new, c.scale)) for c in changes]
    numeric = [(c, old, new) for c, old, new in rows if old is not None and new is not None and c.action != "fixed"]
    left = max(LEFT_IN, text_width_in((c.name for c, _, _ in numeric), fontsize=8) + 0.2)
    figure = framed_figure(7.5, 0.45 * max(len(numeric), 2) + 1.2, left=left)
    axes = figure.subplots()
    for row, (change, (old_low, old_high), (new_low, new_high)) in enumerate(numeric):
        span = (old_high - old_low) or 1.0
        start, end = (new_low - old_low) / span, (new_high - old_low) / span
        axes.barh(row, 1.0, left=0.0, height=0.6, color="lightgray")
        axes.barh(row, max(end - start, 0.01), left=start, height=0.35, color="tab:blue")
        axes.text(max(1.02, end + 0.02), row, change.action, va="center", fontsize=8)
    axes.set_yticks(range(len(numeric)), [c.name for c, _, _ in numeric], fontsize=8)
    axes.axvline(0, color="black", linewidth=0.6)
    axes.axvline(1, color="black", linewidth=0.6)
    axes.set(xlabel="position in the old range (0 = old low, 1 = old high; log space for log parameters)")
    axes.set_title("narrowing: old range (grey) -> new range (blue)", fontsize=10)
    low, high = axes.get_xlim()
    axes.set_xlim(min(-0.1, low), max(1.4, high + 0.3))
    return figure


def final_curves_figure(final: FinalResult) -> Figure:
    """Final training: loss, accuracy and learning rate per epoch, the kept (best) epoch marked."""
    figure = framed_figure(11, 3.4, columns=3, gap=0.8)  # the LR panel's log labels are wider
    loss_axes, acc_axes, lr_axes = figure.subplots(1, 3)
    history = final.history
    epochs = [r.epoch for r in history]
    val = [r for r in history if r.val_loss is not None]
    loss_axes.plot(epochs, [r.train_loss for r in history], marker="o", label="train")
    loss_axes.plot([r.epoch for r in val], [r.val_loss for r in val], marker="s", label="validation")
    acc_axes.plot(epochs, [r.score_pair()[1] for r in history], marker="o", label="train")
    acc_axes.plot([r.epoch for r in val], [r.score_pair()[2] for r in val], marker="s", label="validation")
    lr_axes.step(epochs, [r.lr for r in history], where="post", color="tab:green")
    lr_axes.set_yscale("log")
    for axes in (loss_axes, acc_axes, lr_axes):
        if final.best_epoch is not None:
            axes.axvline(final.best_epoch, color="tab:red", linestyle=":", label=f"kept epoch {final.best_epoch}")
        axes.grid(alpha=0.3)
    score = _score_name([history])
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_axes.set(xlabel="epoch", ylabel=score, title=score, **({"ylim": (0, 1.02)} if score == "accuracy" else {}))
    lr_axes.set(xlabel="epoch", ylabel="learning rate", title=f"LR schedule ({final.stopped})")
    loss_axes.legend(fontsize=8)
    return figure


def trial_states_figure(trials: Sequence[TrialRecord], max_epochs: int) -> Figure:
    """Epochs each trial ran, coloured by state: where pruning stopped the pruned ones."""
    figure = framed_figure(6.5, 3.2)
    axes = figure.subplots()
    for state, colour in STATE_COLOURS.items():
        chosen = [t for t in trials if t.state == state]
        if chosen:
            axes.bar(
                [t.number for t in chosen],
                [t.epochs_run for t in chosen],
                color=colour,
                label=f"{state.lower()} ({len(chosen)})",
            )
    axes.axhline(max_epochs, color="black", linestyle="--", linewidth=0.8, label=f"budget {max_epochs} epochs")
    axes.set(xlabel="trial", ylabel="epochs run", title="pruned vs completed trials")
    axes.grid(alpha=0.3, axis="y")
    axes.legend(fontsize=8)
    return figure


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
