"""Trials decided in windows, so a parallel search picks the same trials as a sequential one.

At concurrency above 1, a model-based sampler (TPE, GP) asked for trial n sees whichever trials
happened to finish first, and a pruner compares a trial against whatever the others have reported so
far: the same config and seed would give different trials with the machine's timing. Here trial n is
decided from exactly the trials numbered below `cutoff(n) = (n // window) * window` (`search.sync_window`):
its sampler and its pruner see a view of the study that holds only those (`study_view`), and the search
loop does not ask trial n before all of them have finished (`unfinished_before`). Which trials exist
when trial n is decided is then fixed by n alone, whatever the concurrency or the number of workers.
"""

import logging
from collections.abc import Sequence

import optuna
from optuna.pruners import BasePruner, HyperbandPruner
from optuna.trial import FrozenTrial, TrialState

from stagetune.search.optuna_private import prune_in_bracket, study_view

LOGGER = logging.getLogger(__name__)


def cutoff(number: int, window: int) -> int:
    """Trial `number` is decided from the trials numbered below this."""
    return (number // window) * window


def view_for(study: optuna.Study, number: int, window: int) -> optuna.Study:
    """The study as trial `number`'s sampler and pruner see it."""
    return study_view(study, cutoff(number, window))


def next_number(trials: Sequence[FrozenTrial]) -> int:
    """The number `study.ask` hands out next: the oldest waiting (enqueued or retried) trial, else a new one."""
    waiting = [t.number for t in trials if t.state == TrialState.WAITING]
    return min(waiting) if waiting else len(trials)


def unfinished_before(trials: Sequence[FrozenTrial], window: int) -> list[int]:
    """The trials the next trial must wait for: those numbered below its cutoff that have not finished.

    Enqueued trials wait too: their parameters are fixed, but their pruner's view is not until then.
    """
    limit = cutoff(next_number(trials), window)
    return [t.number for t in trials if t.number < limit and not t.state.is_finished()]


def effective_concurrency(concurrency: int, window: int, stage: str) -> int:
    """At most `window` trials can run at once (the next window waits for this one): cap, with a note."""
    if concurrency <= window:
        return concurrency
    LOGGER.info(
        "%s stage: execution.concurrency %d is capped at search.sync_window %d (trials are decided in windows "
        "of %d; raise search.sync_window to run more at once)",
        stage,
        concurrency,
        window,
        window,
    )
    return window


class WindowedPruner(BasePruner):
    """The configured pruner, deciding trial n from the trials numbered below `cutoff(n)` only.

    Picklable (a Dask worker's pruning reporter carries it). With Hyperband, Optuna's samplers no longer
    see the trial's bracket only (Optuna narrows them when the study's pruner is a `HyperbandPruner`):
    they learn from every bracket's trials below the cutoff.
    """

    def __init__(self, pruner: BasePruner, window: int) -> None:
        self.pruner = pruner
        self.window = window

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        view = view_for(study, trial.number, self.window)
        if isinstance(self.pruner, HyperbandPruner):
            return prune_in_bracket(self.pruner, view, trial)
        return self.pruner.prune(view, trial)

    def __repr__(self) -> str:
        return f"WindowedPruner({self.pruner.__class__.__name__}, window={self.window})"
