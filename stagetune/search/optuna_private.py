"""Every use of Optuna's private API in stagetune, in one place.

Optuna's public API has no way to name a trial's storage id, to reach a study's storage, to tell
whether a storage keeps heartbeats, or to rebuild the `Trial` of a running trial in another process.
The pipeline needs each (a heartbeat per asked trial, a pruning reporter in a Dask worker), so they
are written once here, and `tests/test_optuna_private.py` checks that each still exists and behaves:
an Optuna upgrade that changes one fails that test, not a search in production.
"""

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial

HeartbeatStorage = BaseHeartbeat  # a storage that records heartbeats (RDBStorage, and Optuna's cache around it)


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
