"""stagetune's own pipeline (the Prefect flow, in this process) as one row of the search benchmark."""

import math
import time
from dataclasses import dataclass, replace

import torch

from bench.datasets import BenchData
from bench.outcome import MethodOutcome
from bench.training import test_predicted_shares
from schemas.config import PipelineConfig
from schemas.pipeline import PipelineResult

METHOD = "stagetune"


@dataclass(frozen=True)
class PipelineCompute:
    """Training compute of one pipeline run in epochs over the sampled training rows."""

    coarse: float
    refine: float
    sanity: float
    trials: int
    pruned: int

    @property
    def search(self) -> float:
        """Coarse plus refinement epochs actually run (pruned ones included): the budget B of the peers."""
        return self.coarse + self.refine


def pipeline_compute(result: PipelineResult, config: PipelineConfig, search_rows: int) -> PipelineCompute:
    """Count the epochs each search stage actually ran, scaled by the rows it trained on (a coarse epoch on half
    the rows is half an epoch). The sanity gate's optimizer steps are converted the same way but kept apart."""
    stages = [s for s in (result.coarse, result.refine) if s is not None]
    per_stage = {s.stage: sum(t.epochs_run for t in s.trials) * s.n_train_rows / search_rows for s in stages}
    sanity = 0.0
    if result.sanity is not None:
        check = result.sanity
        overfit_rows = check.overfit_steps * min(config.sanity.overfit_batch_size, check.overfit_samples)
        lr_range_rows = len(check.lr_range) * config.model.baseline.batch_size
        sanity = (overfit_rows + lr_range_rows) / search_rows
        sanity += len(check.baseline.history) if check.baseline is not None else 0
    trials = [t for s in stages for t in s.trials]
    return PipelineCompute(
        coarse=per_stage.get("coarse", 0.0),
        refine=per_stage.get("refine", 0.0),
        sanity=sanity,
        trials=len(trials),
        pruned=sum(t.state == "PRUNED" for t in trials),
    )


def run_stagetune(data: BenchData, seed: int) -> MethodOutcome:
    """Run the whole flow on `data.config`, count its search epochs; its final model's test score is the row's."""
    from flows.tune_pipeline import tune_pipeline

    threads = torch.get_num_threads()
    started = time.perf_counter()
    try:
        result = tune_pipeline(data.config)
    finally:
        # The flow divides the torch thread pool between concurrent trials and leaves it divided.
        torch.set_num_threads(threads)
    pipeline_seconds = time.perf_counter() - started
    compute = pipeline_compute(result, data.config, data.n_search_rows)
    searched = sum(s.seconds for s in (result.coarse, result.refine) if s is not None)
    outcome = MethodOutcome(
        method=METHOD,
        dataset=data.spec.name,
        seed=seed,
        status="ok" if result.status == "completed" else f"failed: {result.status}",
        budget_epochs=compute.search,
        epochs_used=compute.search,
        trials=compute.trials,
        pruned=compute.pruned,
        search_seconds=searched,
        total_seconds=pipeline_seconds,
    )
    if result.best_hyperparams is None or result.final is None:
        return replace(outcome, extra={"message": result.message})
    # The row is what a newcomer gets: the pipeline's own final model and its test score (its final stage
    # may train differently from the peers' shared retrain rule, e.g. on small data).
    return replace(
        outcome,
        final_epochs=result.final.epochs_run,
        test_metric=result.test_metrics.get(data.spec.metric, math.nan),
        best_hyperparams=result.best_hyperparams,
        extra={
            "predicted_shares": test_predicted_shares(result.final.test),
            "final_stopped": result.final.stopped,
            "objective": data.config.search.objective,
            # Small data: each trial epoch trains this many folds, and B counts it once (the peers train one split).
            "cv_folds": data.config.search.resolved_cv_folds,
            "coarse_epochs": compute.coarse,
            "refine_epochs": compute.refine,
            "sanity_epochs_equivalent": compute.sanity,
        },
    )
