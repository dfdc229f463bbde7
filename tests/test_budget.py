"""The shared trial budget: exact across processes, enqueued trials handed out first."""

import multiprocessing
from pathlib import Path

import optuna

from stagetune.search.budget import claim_trial


def _claim_all(storage: str, n_trials: int) -> list[int]:
    study = optuna.load_study(study_name="s", storage=storage)
    numbers = []
    while (trial := claim_trial(study, storage, n_trials)) is not None:
        numbers.append(trial.number)
        study.tell(trial, 0.0)
    return numbers


def test_enqueued_trials_count_once_and_come_first(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({"x": 1.0})
    study.enqueue_trial({"x": 2.0})
    claimed = []
    while (trial := claim_trial(study, storage, 3)) is not None:
        claimed.append(trial.suggest_float("x", 0, 5))
        study.tell(trial, 0.0)
    assert claimed[:2] == [1.0, 2.0]
    assert len(study.trials) == 3


def test_processes_share_an_exact_budget(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    optuna.create_study(study_name="s", storage=storage)
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        parts = pool.starmap(_claim_all, [(storage, 20)] * 3)
    numbers = sorted(n for part in parts for n in part)
    assert numbers == list(range(20))
