"""Plain Optuna as a user would write it: `study.optimize` over `trial.suggest_*`, reporting each epoch.

The budget is counted in training epochs over the sampled training rows, pruned epochs included: a
trial never starts an epoch the budget does not cover, and the study stops once the budget is spent.
"""

import time
from dataclasses import dataclass, replace
from typing import Literal

import optuna

from bench.datasets import BenchData
from bench.outcome import MethodOutcome, method_seed
from bench.space import suggest_optuna
from bench.training import best_objective, final_retrain, objective_value, train_search_trial
from schemas.hyperparams import HyperParams
from schemas.results import EpochRecord

OptunaMethod = Literal["optuna-random", "optuna-tpe", "optuna-tpe-hyperband"]


@dataclass
class EpochBudget:
    """Epochs left to spend."""

    total: int
    used: int = 0

    @property
    def left(self) -> int:
        """Epochs not yet spent."""
        return self.total - self.used


def make_study(
    method: OptunaMethod, direction: Literal["minimize", "maximize"], seed: int, max_epochs: int
) -> optuna.Study:
    """An in-memory study with the sampler (and pruner) the method names, at their defaults."""
    if method == "optuna-random":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed)
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if method == "optuna-tpe-hyperband":
        pruner = optuna.pruners.HyperbandPruner(max_resource=max_epochs)
    # A fixed study name: Hyperband assigns trials to brackets by a hash of it (a random name made the
    # same seed prune differently from run to run).
    return optuna.create_study(study_name=f"{method}-{seed}", direction=direction, sampler=sampler, pruner=pruner)


def run_optuna(
    method: OptunaMethod, data: BenchData, budget_epochs: int, seed: int, name: str | None = None
) -> MethodOutcome:
    """Search with `method` for `budget_epochs` epochs of up to `refine.epochs` each, then retrain the best."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    config = data.config
    objective_name, max_epochs = config.search.objective, config.refine.epochs
    budget = EpochBudget(budget_epochs)
    stream = method_seed(seed, name or method)
    study = make_study(method, config.search.direction, stream, max_epochs)

    def objective(trial: optuna.Trial) -> float:
        hp = suggest_optuna(trial, config.space)
        trial.set_user_attr("hp", hp.model_dump(mode="json"))
        epochs = min(max_epochs, budget.left)
        budget.used += epochs  # reserved up front; an epoch not run (pruned) is handed back below
        history: list[EpochRecord] = []

        def on_epoch(record: EpochRecord) -> None:
            history.append(record)
            trial.report(objective_value(record, objective_name), record.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        try:
            train_search_trial(data, hp, epochs, stream * 10_000 + trial.number, on_epoch)
        finally:
            budget.used -= epochs - len(history)
        if epochs < max_epochs:
            raise optuna.TrialPruned()  # cut short by the budget: not a complete trial
        return best_objective(history, objective_name)

    def stop_when_spent(study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        if budget.left <= 0:
            study.stop()

    started = time.perf_counter()
    if budget.left > 0:
        study.optimize(objective, callbacks=[stop_when_spent], catch=(ValueError, RuntimeError))
    search_seconds = time.perf_counter() - started
    return _outcome(name or method, data, study, budget, seed, search_seconds, started)


def _outcome(
    name: str,
    data: BenchData,
    study: optuna.Study,
    budget: EpochBudget,
    seed: int,
    search_seconds: float,
    started: float,
) -> MethodOutcome:
    states = [t.state for t in study.trials]
    base = MethodOutcome(
        method=name,
        dataset=data.spec.name,
        seed=seed,
        status="failed: no trial completed",
        budget_epochs=float(budget.total),
        epochs_used=float(budget.used),
        trials=len(states),
        pruned=states.count(optuna.trial.TrialState.PRUNED),
        search_seconds=search_seconds,
    )
    if not any(s == optuna.trial.TrialState.COMPLETE for s in states):
        return base
    best = study.best_trial
    hp = HyperParams(**best.user_attrs["hp"])
    final = final_retrain(data, hp)
    return replace(
        base,
        status="ok",
        final_epochs=final.epochs,
        test_metric=final.metric(data.spec.metric),
        total_seconds=time.perf_counter() - started,
        best_hyperparams=hp,
        extra={"best_value": best.value, "predicted_shares": final.predicted_shares},
    )
