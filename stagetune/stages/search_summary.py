"""What a finished search stage reports: its result model, its MLflow summary and its study plots."""

import math
import warnings

import optuna
from mlflow.tracking import MlflowClient

from schemas.config import PipelineConfig
from schemas.pipeline import SearchStageResult
from schemas.search import TrialRecord
from stagetune.search.space import logged_hyperparams
from stagetune.tracking.run_tree import log_model_json, log_record
from stagetune.tracking.study_plots import history_svg, importances_svg, parallel_coordinates_svg


def top_trials(records: list[TrialRecord], direction: str, k: int) -> list[TrialRecord]:
    """The k best COMPLETE trials (ties broken by trial number)."""
    complete = [r for r in records if r.state == "COMPLETE" and r.value is not None and math.isfinite(r.value)]
    sign = 1.0 if direction == "minimize" else -1.0
    return sorted(complete, key=lambda r: (sign * (r.value or 0.0), r.number))[:k]


def state_counts(records: list[TrialRecord]) -> dict[str, int]:
    """Trials per final state (COMPLETE, PRUNED, FAIL)."""
    return {state: sum(r.state == state for r in records) for state in ("COMPLETE", "PRUNED", "FAIL")}


def log_stage_summary(
    client: MlflowClient, config: PipelineConfig, result: SearchStageResult, study: optuna.Study
) -> None:
    """The stage run's summary: trial counts, the best trial, the result JSON and the study plots.

    Params, metrics and tags go in one `log_batch`: each MLflow call is a transaction (or a round
    trip), and the stage's end is on the pipeline's critical path.
    """
    run_id = result.mlflow_run_id
    rows = [(f"trials/{state.lower()}", float(n), 0) for state, n in result.counts.items()]
    params: dict[str, object] = {}
    tags = {"stagetune.diagnosis_summary": result.diagnosis.message[:5000]}
    if result.best is not None and result.best.value is not None:
        rows.append(("best/objective", result.best.value, 0))
        best_params = logged_hyperparams(result.best.hyperparams, config.model)
        params = {f"best.{k}": v for k, v in best_params.items()}
        tags["stagetune.best_trial"] = str(result.best.number)
    importances, why_not = _importances(result.trials, study)
    if why_not:
        tags["stagetune.importances"] = why_not
    log_record(client, run_id, params, rows, tags)
    log_model_json(client, run_id, result, f"results/{result.stage}.json")
    minimize = config.search.direction == "minimize"
    objective = config.search.objective
    client.log_text(run_id, history_svg(result.trials, objective, minimize), "plots/history.svg")
    client.log_text(
        run_id, parallel_coordinates_svg(result.trials, objective, minimize), "plots/parallel_coordinates.svg"
    )
    if importances:
        client.log_text(run_id, importances_svg(importances), "plots/param_importances.svg")


def _importances(records: list[TrialRecord], study: optuna.Study) -> tuple[dict[str, float], str]:
    """fANOVA importances of the study's params, or none and why (empty: too few completed trials)."""
    if sum(r.state == "COMPLETE" for r in records) < 3:
        return {}, ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study)), ""
    except (ValueError, RuntimeError) as error:  # e.g. a single parameter varied, or all values equal
        return {}, f"not computed: {error}"[:500]
