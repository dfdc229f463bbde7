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
    final_extra: float = 0.0

    @property
    def search(self) -> float:
        """Coarse plus refinement epochs actually run (pruned ones included)."""
        return self.coarse + self.refine

    @property
    def budget(self) -> float:
        """The budget B of the peers: the search's epochs plus the final stage's beyond one network.

        Every peer retrains one network of its best point; stagetune's final stage trains `final.ensemble`
        of them. The epochs of the members after the first are compute the peers did not get, so they join B
        (each peer spends them on more search)."""
        return self.search + self.final_extra


def pipeline_compute(
    result: PipelineResult, config: PipelineConfig, search_rows: int, final_rows: int
) -> PipelineCompute:
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
        final_extra=final_extra_epochs(result, config, final_rows) / search_rows,
    )


def final_extra_epochs(result: PipelineResult, config: PipelineConfig, final_rows: int) -> float:
    """Row-epochs the final stage trained beyond its first network: every member after the first, over the
    rows a member trains on (the training split; on small data the training and validation rows)."""
    if result.final is None or len(result.final.members) <= 1:
        return 0.0
    return sum(member.epochs_run for member in result.final.members[1:]) * final_rows


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
    arrays = data.arrays
    final_rows = len(arrays.y_train) + (len(arrays.y_val) if data.config.search.resolved_cv_folds > 1 else 0)
    compute = pipeline_compute(result, data.config, data.n_search_rows, final_rows)
    searched = sum(s.seconds for s in (result.coarse, result.refine) if s is not None)
    outcome = MethodOutcome(
        method=METHOD,
        dataset=data.spec.name,
        seed=seed,
        status="ok" if result.status == "completed" else f"failed: {result.status}",
        budget_epochs=compute.budget,
        epochs_used=compute.budget,
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
            # The final ensemble's members after the first, in epochs over the search rows: part of B above.
            "final_extra_epochs": compute.final_extra,
            "final_members": len(result.final.members) or 1,
        },
    )
