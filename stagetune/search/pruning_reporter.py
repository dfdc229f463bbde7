"""The per-epoch `report(epoch, value) -> should_prune` callback a trial gets instead of the Optuna trial.

The training core never sees Optuna: it reports each epoch's objective through this callback and
stops when it answers True.
"""

import math
from dataclasses import dataclass, field

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import RandomSampler

from stagetune.search.optuna_private import running_trial
from stagetune.search.study import open_storage


def pruning_reporter(trial: optuna.Trial, storage: str) -> "PruningReporter":
    """The reporter of an asked trial.

    In this process it reports through the asked trial itself; it also names the trial (storage URL,
    study, number), so a pickled copy reports to the same study from any process that reaches the
    storage (a Dask worker).
    """
    return PruningReporter(storage, trial.study.study_name, trial.number, trial.study.pruner, trial)


@dataclass
class PruningReporter:
    """Forwards per-epoch values to Optuna and asks its pruner whether to stop.

    `trial`, the asked trial, is used in the process that asked for it; it is never pickled, and a
    copy in another process rebuilds it from the storage once, over one storage object (one journal
    reader, or one SQLAlchemy engine) per process and URL.
    """

    storage: str
    study_name: str
    number: int
    pruner: BasePruner
    trial: optuna.Trial | None = field(default=None, repr=False, compare=False)

    def __call__(self, epoch: int, value: float) -> bool:
        if not math.isfinite(value):
            return False
        trial = self.trial or self._load_trial()
        trial.report(value, epoch)
        return bool(trial.should_prune())

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "trial": None}

    def _load_trial(self) -> optuna.Trial:
        storage = open_storage(self.storage)
        # The sampler is never asked here; a random one avoids building the stage's sampler per trial.
        study = optuna.load_study(
            study_name=self.study_name, storage=storage, sampler=RandomSampler(), pruner=self.pruner
        )
        self.trial = running_trial(study, self.number)
        return self.trial
