"""Every use of Optuna's private API in stagetune, in one place.

Optuna's public API has no way to name a trial's storage id, to reach a study's storage, to tell
whether a storage keeps heartbeats, to give a journal file its own kind of lock, to tell a journal
line's operation, or to rebuild the `Trial` of a running trial in another process.
The pipeline needs each (a heartbeat per asked trial, a pruning reporter in a Dask worker), so they
are written once here, and so is the windowed view of a study (`study_view`: Optuna's samplers read
trials through the private `Study._get_trials`, and Hyperband builds its bracket study straight on the
storage, past any view), and `tests/test_optuna_private.py` checks that each still exists and behaves:
an Optuna upgrade that changes one fails that test, not a search in production.
"""

import copy
from collections.abc import Callable, Container
from typing import Any, cast

import optuna
from optuna.pruners import HyperbandPruner
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal._file import BaseJournalFileLock
from optuna.storages.journal._storage import JournalOperation
from optuna.trial import FrozenTrial, TrialState

HeartbeatStorage = BaseHeartbeat  # a storage that records heartbeats (RDBStorage, and Optuna's cache around it)
JournalFileLock = BaseJournalFileLock  # what `JournalFileBackend(lock_obj=...)` takes: `acquire()` and `release()`


def is_intermediate_value(log: dict[str, Any]) -> bool:
    """Whether a journal line (what `JournalStorage` hands its backend's `append_logs`) records one
    per-epoch value of a trial (`Trial.report`)."""
    return bool(log.get("op_code") == JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE)


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of `trial` (what heartbeats are recorded against; unique across studies)."""
    return trial._trial_id


def study_storage(study: optuna.Study) -> BaseStorage:
    """The storage object `study` reads and writes through (Optuna's cache around the RDB storage)."""
    return study._storage


def heartbeat_storage(storage: BaseStorage) -> BaseHeartbeat | None:
    """`storage` as a heartbeat recorder, or None when its kind keeps no heartbeats (in-memory, journal)."""
    return storage if isinstance(storage, BaseHeartbeat) else None


def running_trial(study: optuna.Study, number: int) -> optuna.Trial:
    """The live `Trial` of trial `number` of `study` (asked elsewhere, e.g. by the process that pickled a
    pruning reporter), to report intermediate values and ask the pruner through."""
    storage = study_storage(study)
    storage_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number
    )
    return optuna.Trial(study, storage_id)


class _StudyView:
    """A study whose trial listings hold only the trials `keep` accepts; everything else is the study's.

    Optuna's samplers and pruners read a study's trials through `get_trials` (pruners) and the private
    `_get_trials` (TPE, GP, the intersection and group search spaces); both are filtered here. The
    `trials` property follows. Writes (a pruner's rung values, a sampler's system attrs) go to the
    study's storage unchanged.
    """

    def __init__(self, study: optuna.Study, keep: Callable[[FrozenTrial], bool]) -> None:
        self._viewed = study
        self._keep = keep

    def __getattr__(self, name: str) -> Any:
        viewed = self.__dict__.get("_viewed")
        if viewed is None:  # during copy/unpickling, before __init__ ran
            raise AttributeError(name)
        return getattr(viewed, name)

    def _filtered(self, trials: list[FrozenTrial], deepcopy: bool) -> list[FrozenTrial]:
        kept = [t for t in trials if self._keep(t)]
        return copy.deepcopy(kept) if deepcopy else kept

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._filtered(self._viewed.get_trials(deepcopy=False, states=states), deepcopy)

    def _get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None, use_cache: bool = False
    ) -> list[FrozenTrial]:
        return self._filtered(self._viewed._get_trials(deepcopy=False, states=states, use_cache=use_cache), deepcopy)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


def study_view(study: optuna.Study, cutoff: int) -> optuna.Study:
    """`study` as trial `n` with `cutoff(n)` sees it: its listings hold only the trials numbered below `cutoff`.

    A proxy, not a copy: direction, name, storage, user attrs and every other member are the study's.
    """
    return cast(optuna.Study, _StudyView(study, lambda trial: trial.number < cutoff))


def prune_in_bracket(pruner: HyperbandPruner, study: optuna.Study, trial: FrozenTrial) -> bool:
    """`HyperbandPruner.prune` over `study` as given (a view): Optuna's own bracket study is a new `Study` on
    the storage, which would read every trial past the view. The bracket's successive-halving pruner sees
    the view's trials of the trial's bracket, as Optuna's bracket study holds the study's."""
    if not pruner._pruners:
        pruner._try_initialization(study)
        if not pruner._pruners:
            return False
    bracket = pruner._get_bracket_id(study, trial)
    in_bracket = _StudyView(study, lambda other: pruner._get_bracket_id(study, other) == bracket)
    return pruner._pruners[bracket].prune(cast(optuna.Study, in_bracket), trial)
