"""Samplers seeded per trial, so a resumed study or a second process never replays earlier draws.

A sampler rebuilt with the pipeline's seed after a kill starts its random stream again: trial 7 of
the resumed attempt drew what trial 0 drew. `TrialSeededSampler` gives each trial a sampler of its
own, seeded from (seed, trial number). Trial numbers are unique in a study, whichever process or
attempt asks, so no two trials share a stream; and a fresh run with the same seed asks the same
numbers in the same order, so it draws the same points.

With a sync window (`stagetune.search.sync_window`), the wrapped sampler reads the study through the
view of the trial's window: what TPE or GP fits its model on is fixed by the trial's number, not by
which trials happened to finish before it was asked.
"""

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from stagetune.search.sync_window import view_for


def trial_seed(seed: int, number: int) -> int:
    """A 32-bit seed for trial `number` of a study seeded with `seed` (distinct streams per trial)."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class TrialSeededSampler(BaseSampler):
    """Delegates every call about a trial to `build(trial_seed(seed, trial.number))`, built once per trial.

    Model-based samplers (TPE, GP) lose nothing: their model is refitted from the study's trials at
    every ask anyway; only their random draws (start-up trials, candidate sampling) are reseeded. With
    `sync_window`, they sample from the view of the trial's window (`view_for`); None: the whole study.
    """

    def __init__(
        self,
        build: Callable[[int], BaseSampler],
        seed: int,
        name: str,
        n_startup_trials: int | None = None,
        sync_window: int | None = None,
    ) -> None:
        self._build = build
        self.seed = seed
        self.name = name  # the wrapped sampler's class name, for logs and MLflow params
        self.n_startup_trials = n_startup_trials  # TPE/GP: random trials before the model is used
        self.sync_window = sync_window
        self._per_trial: dict[int, BaseSampler] = {}
        self._lock = threading.Lock()

    def _sampler(self, trial: FrozenTrial) -> BaseSampler:
        with self._lock:
            sampler = self._per_trial.get(trial.number)
            if sampler is None:
                sampler = self._per_trial[trial.number] = self._build(trial_seed(self.seed, trial.number))
            return sampler

    def _view(self, study: optuna.Study, trial: FrozenTrial) -> optuna.Study:
        return study if self.sync_window is None else view_for(study, trial.number, self.sync_window)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._sampler(trial).infer_relative_search_space(self._view(study, trial), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._sampler(trial).sample_relative(self._view(study, trial), trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._sampler(trial).sample_independent(self._view(study, trial), trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._sampler(trial).before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        sampler = self._sampler(trial)
        with self._lock:
            self._per_trial.pop(trial.number, None)  # told: its sampler is not asked again
        sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing to reseed: every trial's sampler is seeded from its number."""

    def __repr__(self) -> str:
        window = "" if self.sync_window is None else f", sync_window={self.sync_window}"
        return f"TrialSeededSampler({self.name}, seed={self.seed}{window})"
