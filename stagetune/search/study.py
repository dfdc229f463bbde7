"""Optuna studies of the two search stages: storage, samplers, pruners, and trials as records."""

import os
import warnings
from functools import cache
from pathlib import Path
from typing import Literal

import optuna
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner
from optuna.samplers import BaseSampler, GPSampler, QMCSampler, RandomSampler, TPESampler
from optuna.storages import BaseStorage

from schemas.config import PipelineConfig
from schemas.urls import default_storage_url, journal_path
from stagetune.search.budget import budget_lock
from stagetune.search.dead_trials import RetryDeadTrial
from stagetune.search.journal_file import journal_storage
from stagetune.search.liveness import Liveness
from stagetune.search.seeding import TrialSeededSampler
from stagetune.search.sync_window import WindowedPruner
from stagetune.settings import load_settings

SamplerKind = Literal["random", "qmc", "tpe", "gp"]
PrunerKind = Literal["median", "hyperband", "none"]


def storage_url(config: PipelineConfig) -> str:
    """`search.storage`, else the runtime settings' Optuna storage, else the workdir's own
    (`schemas.urls.default_storage_url`: a journal file, or the SQLite database of an earlier version)."""
    configured = config.search.storage or load_settings().optuna_storage
    if configured:
        return configured
    workdir = Path(config.execution.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return default_storage_url(workdir)


def make_sampler(
    kind: SamplerKind, seed: int, n_startup_trials: int = 10, sync_window: int | None = None
) -> TrialSeededSampler:
    """A seeded sampler: random / Sobol QMC for the coarse stage, multivariate TPE / GP for refinement.

    Its random draws are seeded per trial from (seed, trial number) (`TrialSeededSampler`): a resumed
    study or a second process never replays the draws of earlier trials, and a fresh run with the same
    seed draws the same points. The Sobol sequence itself keeps `seed`: QMCSampler takes the next
    point's index from a counter stored in the study, so every attempt and process continues one sequence.
    With `sync_window` (`search.sync_window`), trial n samples from the trials numbered below its window's
    start only (`stagetune.search.sync_window`).
    """
    if kind == "random":
        return TrialSeededSampler(lambda s: RandomSampler(seed=s), seed, "RandomSampler", sync_window=sync_window)
    if kind == "qmc":
        return TrialSeededSampler(lambda s: _sobol(seed, s), seed, "QMCSampler", sync_window=sync_window)
    if kind == "tpe":
        return TrialSeededSampler(
            lambda s: _tpe(s, n_startup_trials), seed, "TPESampler", n_startup_trials, sync_window
        )
    return TrialSeededSampler(
        lambda s: GPSampler(seed=s, n_startup_trials=n_startup_trials, warn_independent_sampling=False),
        seed,
        "GPSampler",
        n_startup_trials,
        sync_window,
    )


def _sobol(sequence_seed: int, trial_seed: int) -> BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Conditional parameters (the per-optimizer learning rate) fall back to random sampling.
        return QMCSampler(
            qmc_type="sobol",
            scramble=True,
            seed=sequence_seed,
            independent_sampler=RandomSampler(seed=trial_seed),
            warn_independent_sampling=False,
        )


def _tpe(seed: int, n_startup_trials: int) -> BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # `group` is experimental
        # group=True: the per-optimizer learning rates are conditional parameters.
        return TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=n_startup_trials)


def make_pruner(kind: PrunerKind, max_epochs: int, sync_window: int | None = None) -> BasePruner:
    """Pruning on per-epoch validation: median rule, Hyperband, or none.

    With `sync_window` (`search.sync_window`), trial n is compared with the trials numbered below its
    window's start only (`WindowedPruner`): its verdict does not depend on what the others reported so far.
    """
    pruner: BasePruner
    if kind == "median":
        pruner = MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    elif kind == "hyperband":
        pruner = HyperbandPruner(min_resource=1, max_resource=max_epochs, reduction_factor=3)
    else:
        return NopPruner()
    return pruner if sync_window is None else WindowedPruner(pruner, sync_window)


def open_storage(url: str, liveness: Liveness | None = None) -> BaseStorage:
    """The storage at `url`: a `journal:///` file (`stagetune.search.journal_file`), else an RDB URL.

    One storage object per URL per process: a journal is read once and then only its new lines, and an
    RDB storage keeps one connection pool (a URL string passed to Optuna builds a new engine every time,
    and a polling worker would exhaust the database's connections).

    With `liveness`, an RDB storage records heartbeats (`stagetune.search.liveness`) and retries the
    trials whose heartbeat went stale (`stagetune.search.dead_trials`). A journal keeps no heartbeats
    (Optuna 5.0's `JournalStorage` does not implement them): its trials' processes are all on this
    machine, and a dead one is found by its process id (`stagetune.search.liveness.owner_is_dead`).
    """
    path = journal_path(url)
    if path is not None:
        return _journal(path.absolute())
    return _rdb_storage(url, liveness)


@cache
def _journal(path: Path) -> BaseStorage:
    return journal_storage(path)


@cache
def _rdb_storage(url: str, liveness: Liveness | None) -> optuna.storages.RDBStorage:
    interval = None if liveness is None else liveness.heartbeat_seconds
    grace = None if liveness is None else liveness.stale_after_seconds
    retry = None if liveness is None else RetryDeadTrial(liveness.max_retries)
    # Creating the schema of a fresh database from several processes at once races (duplicate
    # type/table errors): the first process creates it under a lock, the others then find it.
    with budget_lock(url, "stagetune-storage-schema"), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
        _create_sqlite_schema_whole(url)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=_engine_kwargs(url),
            heartbeat_interval=interval,
            grace_period=grace,
            heartbeat_stale_trial_callback=retry,
        )


def _create_sqlite_schema_whole(url: str) -> None:
    """Create a new SQLite database's schema in a side file, then move it in place (SQLite only: a
    journal has no schema, and PostgreSQL creates it in one transaction).

    SQLite commits each CREATE statement alone: a process killed while Optuna creates the schema
    left a database whose `studies` table lacked its unique index on the name (the next attempt
    finds the table and skips it), and later attempts then created a second study of the same name
    (seen in the kill campaign, 2026-12-06). A database that exists is left alone.
    """
    if not url.startswith("sqlite:///"):
        return
    path = Path(url.removeprefix("sqlite:///"))
    if path.name in ("", ":memory:") or path.exists():
        return
    building = path.with_name(f".{path.name}.{os.getpid()}.creating")
    building.unlink(missing_ok=True)
    optuna.storages.RDBStorage(f"sqlite:///{building}").engine.dispose()
    os.replace(building, path)


def _engine_kwargs(url: str) -> dict[str, object]:
    if url.startswith("sqlite"):
        # Trials, heartbeats and the coordinator write from several threads and processes: wait for
        # SQLite's write lock (up to a minute on a loaded machine) instead of failing at 5 s.
        return {"pool_pre_ping": True, "connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def liveness_of(config: PipelineConfig) -> Liveness:
    """The config's heartbeat settings."""
    search = config.search
    return Liveness(search.heartbeat_seconds, search.stale_after_seconds, search.max_retries)


def open_study(
    name: str,
    storage: str,
    direction: Literal["minimize", "maximize"],
    sampler: BaseSampler,
    pruner: BasePruner,
    liveness: Liveness | None = None,
) -> optuna.Study:
    """Create the study, or load it when it exists (same name and storage): a restarted pipeline
    continues its studies where they stopped."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=name,
        storage=open_storage(storage, liveness),
        direction=direction,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )


def study_exists(storage: str, name: str) -> bool:
    """Whether the storage holds a study of that name."""
    try:
        open_storage(storage).get_study_id_from_name(name)
    except KeyError:
        return False
    return True
