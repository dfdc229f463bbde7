"""Ray Tune with ASHA as a user would write it: a function trainable reporting each epoch, `Tuner` with an
`ASHAScheduler` at its defaults, random sampling from the same space, stopped when the epoch budget is spent.

Ray is an optional extra: callers check `bench.common.ray_available()` first.
"""

import logging
import os
import tempfile
import time
from dataclasses import replace
from typing import Any

from bench.datasets import BenchData
from bench.outcome import MethodOutcome, method_seed
from bench.space import hyperparams_from, ray_param_space
from bench.training import final_retrain, objective_value, train_search_trial
from schemas.results import EpochRecord

METHOD = "ray-tune-asha"


def start_ray() -> float:
    """Start a local Ray runtime (one CPU per core, no dashboard) if none runs; return the seconds it took."""
    import ray

    started = time.perf_counter()
    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    return time.perf_counter() - started


def asha_trainable(config: dict[str, Any], data: BenchData, max_epochs: int) -> None:
    """Train one sampled configuration, reporting the objective after every epoch (ASHA may stop it)."""
    from ray import tune

    objective = data.config.search.objective

    def on_epoch(record: EpochRecord) -> None:
        tune.report({"objective": objective_value(record, objective)})

    train_search_trial(data, hyperparams_from(config), max_epochs, int(config["trial_seed"]), on_epoch)


def epoch_budget_stopper(budget: int) -> Any:
    """A Ray `Stopper` that ends the whole experiment once the trials have reported `budget` epochs between them.

    Trials still running then finish the epoch they are in: the overshoot is at most one epoch per
    concurrent trial, and the epochs actually run are what the benchmark reports.
    """
    from ray.tune import Stopper

    class EpochBudgetStopper(Stopper):
        def __init__(self) -> None:
            self.used = 0

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            self.used += 1
            return False

        def stop_all(self) -> bool:
            return self.used >= budget

    return EpochBudgetStopper()


def run_ray_asha(data: BenchData, budget_epochs: int, seed: int) -> MethodOutcome:
    """ASHA over random samples for `budget_epochs` epochs of up to `refine.epochs` each; retrain the best."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    start_ray()
    config = data.config
    mode = "min" if config.search.direction == "minimize" else "max"
    max_epochs = config.refine.epochs
    stream = method_seed(seed, METHOD)
    space = ray_param_space(config.space, stream) | {"trial_seed": tune.randint(0, 2**31 - 1)}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as storage:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(asha_trainable, data=data, max_epochs=max_epochs), {"cpu": 1}),
            param_space=space,
            tune_config=tune.TuneConfig(
                metric="objective",
                mode=mode,
                scheduler=ASHAScheduler(max_t=max_epochs),
                search_alg=BasicVariantGenerator(random_state=stream),
                num_samples=budget_epochs,  # an upper bound: every trial runs at least one epoch
                # Not the default (False), which starts a fresh worker per trial (~4 s each here). It changes
                # how fast trials start, not which ones run.
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(storage_path=storage, stop=epoch_budget_stopper(budget_epochs), verbose=0),
        )
        grid = tuner.fit()
        search_seconds = time.perf_counter() - started
        reported = (int((grid[i].metrics or {}).get("training_iteration", 0)) for i in range(len(grid)))
        iterations = [n for n in reported if n > 0]
        best = grid.get_best_result(metric="objective", mode=mode, scope="all")
        best_config, best_value = dict(best.config or {}), best.metrics.get("objective") if best.metrics else None
    outcome = MethodOutcome(
        method=METHOD,
        dataset=data.spec.name,
        seed=seed,
        status="ok",
        budget_epochs=float(budget_epochs),
        epochs_used=float(sum(iterations)),
        trials=len(iterations),
        pruned=sum(i < max_epochs for i in iterations),
        search_seconds=search_seconds,
    )
    hp = hyperparams_from(best_config)
    final = final_retrain(data, hp)
    return replace(
        outcome,
        final_epochs=final.epochs,
        test_metric=final.metric(data.spec.metric),
        total_seconds=time.perf_counter() - started,
        best_hyperparams=hp,
        extra={"best_value": best_value, "predicted_shares": final.predicted_shares},
    )
