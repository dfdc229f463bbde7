"""What a finished search stage reports: its result model, its MLflow summary and its study plots."""

import math
import warnings

import optuna
from mlflow.tracking import MlflowClient

from schemas.config import PipelineConfig
from schemas.pipeline import SearchStageResult
from schemas.search import TrialRecord
from stagetune.search.space import logged_hyperparams
from stagetune.tracking.run_tree import log_metrics, log_model_json, log_params, log_tags
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
    """The stage run's summary: trial counts, the best trial, the result JSON and the study plots."""
    run_id = result.mlflow_run_id
    rows = [(f"trials/{state.lower()}", float(n), 0) for state, n in result.counts.items()]
    if result.best is not None and result.best.value is not None:
        rows.append(("best/objective", result.best.value, 0))
        best_params = logged_hyperparams(result.best.hyperparams, config.model)
        log_params(client, run_id, {f"best.{k}": v for k, v in best_params.items()})
        log_tags(client, run_id, {"stagetune.best_trial": str(result.best.number)})
    log_metrics(client, run_id, rows)
    log_tags(client, run_id, {"stagetune.diagnosis_summary": result.diagnosis.message[:5000]})
    log_model_json(client, run_id, result, f"results/{result.stage}.json")
    _log_study_plots(client, run_id, config, result.trials, study)


def _log_study_plots(
    client: MlflowClient, run_id: str, config: PipelineConfig, records: list[TrialRecord], study: optuna.Study
) -> None:
    minimize = config.search.direction == "minimize"
    client.log_text(run_id, history_svg(records, config.search.objective, minimize), "plots/history.svg")
    figure = parallel_coordinates_svg(records, config.search.objective, minimize)
    client.log_text(run_id, figure, "plots/parallel_coordinates.svg")
    if sum(r.state == "COMPLETE" for r in records) >= 3:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = optuna.importance.get_param_importances(study)
        except (ValueError, RuntimeError) as error:  # e.g. a single parameter varied, or all values equal
            log_tags(client, run_id, {"stagetune.importances": f"not computed: {error}"[:500]})
        else:
            if importances:
                client.log_text(run_id, importances_svg(importances), "plots/param_importances.svg")
