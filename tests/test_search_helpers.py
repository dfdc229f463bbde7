"""Pure pieces of the search stages: objectives, ranking, LR centring, pruning reports, samplers."""

import math
from pathlib import Path

import optuna
import pytest

from schemas.hyperparams import HyperParams
from schemas.results import EpochRecord
from schemas.search import TrialRecord
from schemas.search_space import SearchSpace
from stagetune.search.pruning_reporter import pruning_reporter
from stagetune.search.study import make_pruner, make_sampler
from stagetune.stages.search_stage import centre_learning_rates
from stagetune.stages.search_summary import top_trials
from stagetune.stages.trial import best_value, objective_value


def _epoch(epoch: int, val_loss: float, val_acc: float) -> EpochRecord:
    return EpochRecord(
        epoch=epoch, train_loss=1.0, train_acc=0.5, val_loss=val_loss, val_acc=val_acc, lr=1e-3, seconds=0.0
    )


def _trial(number: int, state: str, value: float | None) -> TrialRecord:
    return TrialRecord(number=number, state=state, value=value, hyperparams=HyperParams())  # type: ignore[arg-type]


def test_best_value_takes_the_best_epoch_in_the_objective_direction() -> None:
    history = [_epoch(0, 0.9, 0.6), _epoch(1, 0.5, 0.7), _epoch(2, 0.7, 0.8)]
    assert best_value(history, "val_loss") == 0.5
    assert best_value(history, "val_acc") == 0.8
    assert best_value([], "val_loss") is None
    assert math.isnan(objective_value(_epoch(0, 0.1, 0.2), "val_balanced_acc"))


def test_top_trials_ranks_complete_trials_and_breaks_ties_by_number() -> None:
    trials = [_trial(0, "COMPLETE", 0.3), _trial(1, "PRUNED", 0.1), _trial(2, "COMPLETE", 0.2)]
    trials += [_trial(3, "FAIL", None), _trial(4, "COMPLETE", 0.2), _trial(5, "COMPLETE", math.nan)]
    assert [t.number for t in top_trials(trials, "minimize", 3)] == [2, 4, 0]
    assert [t.number for t in top_trials(trials, "maximize", 2)] == [0, 2]


def test_centring_keeps_each_log_width_and_moves_the_baseline_range_onto_the_suggestion() -> None:
    space = SearchSpace()
    moved = centre_learning_rates(space, "adamw", 1e-2)
    adamw = moved.learning_rate["adamw"]
    assert math.sqrt(adamw.low * adamw.high) == pytest.approx(1e-2)
    for name, old in space.learning_rate.items():
        new = moved.learning_rate[name]
        assert new.high / new.low == pytest.approx(old.high / old.low) or new.high == 1.0
    sgd_ratio = moved.learning_rate["sgd"].low / space.learning_rate["sgd"].low
    assert sgd_ratio == pytest.approx(adamw.low / space.learning_rate["adamw"].low)


def test_pruning_reporter_reports_each_epoch_and_relays_the_pruner(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, pruner=make_pruner("median", 5))
    for value in (0.1, 0.1, 0.1, 0.1):  # four finished trials at loss 0.1 each epoch
        trial = study.ask()
        for epoch in range(3):
            trial.report(value, epoch)
        study.tell(trial, value)
    trial = study.ask()
    report = pruning_reporter(trial, storage)
    assert report(0, 5.0) is False  # warm-up epoch: never pruned
    assert report(1, 5.0) is True  # far worse than the median at epoch 1
    assert report(2, math.nan) is False  # nothing to compare: not reported
    assert study.trials[-1].intermediate_values == {0: 5.0, 1: 5.0}


@pytest.mark.parametrize("kind", ["random", "qmc", "tpe", "gp"])
def test_samplers_are_seeded(kind: str) -> None:
    def draws() -> list[float]:
        study = optuna.create_study(sampler=make_sampler(kind, seed=7, n_startup_trials=2))  # type: ignore[arg-type]
        study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=4)
        return [t.params["x"] for t in study.trials]

    assert draws() == draws()
