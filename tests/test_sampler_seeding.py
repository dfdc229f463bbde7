"""Samplers seeded per trial: a resumed study or a second process never replays earlier draws."""

import optuna
import pytest
from optuna.samplers import RandomSampler

from stagetune.search.seeding import trial_seed
from stagetune.search.study import SamplerKind, make_sampler

KINDS: list[SamplerKind] = ["random", "qmc", "tpe", "gp"]


def _objective(trial: optuna.Trial) -> float:
    """A space like the pipeline's: continuous, integer, categorical, and a conditional parameter."""
    optimizer = trial.suggest_categorical("optimizer", ["sgd", "adam"])
    lr = trial.suggest_float(f"lr_{optimizer}", 1e-4, 1e-1, log=True)
    width = trial.suggest_int("width", 16, 256, log=True)
    dropout = trial.suggest_float("dropout", 0.0, 0.5)
    return lr * 10 + dropout - width / 1000


def _points(study: optuna.Study) -> list[tuple[tuple[str, object], ...]]:
    return [tuple(sorted(t.params.items())) for t in study.trials]


def _attempt(storage: optuna.storages.BaseStorage, kind: SamplerKind, n_trials: int) -> optuna.Study:
    """One attempt of a pipeline: the sampler built anew from the config seed, the study loaded if it exists."""
    sampler = make_sampler(kind, seed=11, n_startup_trials=3)
    study = optuna.create_study(study_name="s", storage=storage, sampler=sampler, load_if_exists=True)
    study.optimize(_objective, n_trials=n_trials)
    return study


@pytest.mark.parametrize("kind", KINDS)
def test_a_resumed_study_draws_what_an_uninterrupted_one_draws_and_repeats_nothing(kind: SamplerKind) -> None:
    uninterrupted = _attempt(optuna.storages.InMemoryStorage(), kind, 8)
    storage = optuna.storages.InMemoryStorage()
    _attempt(storage, kind, 4)  # killed after 4 trials
    resumed = _attempt(storage, kind, 4)  # the same command again: a new sampler, same seed

    assert len(set(_points(resumed))) == 8, _points(resumed)  # no point of the first attempt proposed again
    assert _points(resumed) == _points(uninterrupted)  # deterministic: as if never killed


def test_the_old_seeding_did_repeat_after_a_resume() -> None:
    """The failure this guards against: a sampler rebuilt with the same seed replays its stream."""
    storage = optuna.storages.InMemoryStorage()
    for _ in range(2):
        study = optuna.create_study(
            study_name="s", storage=storage, sampler=RandomSampler(seed=11), load_if_exists=True
        )
        study.optimize(_objective, n_trials=3)
    assert _points(study)[3:] == _points(study)[:3]


@pytest.mark.parametrize("kind", ["random", "qmc"])
def test_two_processes_on_one_study_never_draw_the_same_point(kind: SamplerKind) -> None:
    # A pipeline and a `stagetune worker` build the same sampler (the seed is published on the study).
    storage = optuna.storages.InMemoryStorage()
    studies = [
        optuna.create_study(study_name="s", storage=storage, sampler=make_sampler(kind, seed=11), load_if_exists=True)
        for _ in range(2)
    ]
    for _ in range(5):
        for study in studies:
            trial = study.ask()
            study.tell(trial, _objective(trial))
    points = _points(studies[0])
    assert len(points) == 10
    assert len(set(points)) == 10


def test_trial_seeds_differ_by_trial_and_by_seed() -> None:
    seeds = {trial_seed(seed, number) for seed in range(3) for number in range(100)}
    assert len(seeds) == 300
    assert trial_seed(5, 7) == trial_seed(5, 7)
