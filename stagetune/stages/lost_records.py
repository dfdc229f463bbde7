"""Trial runs whose MLflow records a killed process had queued but not yet written.

The pipeline tells Optuna a trial's outcome (with its `TrialRecord`) as soon as the trial has trained,
and writes the trial's MLflow records on a background thread (`stagetune.tracking.background`). A
process killed in between leaves a told trial whose MLflow run is still RUNNING, without its params
and metrics. When the stage ends, such runs are rebuilt from the study: params, the objective per
epoch (Optuna's intermediate values), the outcome tags and the right end status, tagged
`stagetune.recovered`. Only the other per-epoch curves (train loss and accuracy, learning rate) and the
learning-curve plot are lost.
"""

import datetime as dt
import math

import optuna
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import FrozenTrial, TrialState

from schemas.search import TrialRecord
from stagetune.stages.shared_study import RECORD_ATTR
from stagetune.stages.trial import TrialContext, trial_run_params
from stagetune.tracking.run_tree import end_run, log_record, log_tags

RECOVERED_TAG = "stagetune.recovered"
STATE_TAG = "stagetune.state"
OBJECTIVE_METRIC = {
    name: name.replace("_", "/", 1)
    for name in ("val_loss", "val_acc", "val_balanced_acc", "val_rmse", "val_mae", "val_r2")
}
_TOLD = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def rewrite_lost_trial_records(study: optuna.Study, context: TrialContext) -> list[int]:
    """Complete the MLflow runs of `study`'s told trials that are still RUNNING; return their numbers."""
    client = context.tree.client
    query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{context.stage_run_id}' and attributes.status = 'RUNNING'"
    running = {run.info.run_id: run for run in client.search_runs([context.tree.experiment_id], query)}
    if not running:
        return []
    rewritten = []
    for trial in study.get_trials(deepcopy=False, states=_TOLD):
        stored = trial.user_attrs.get(RECORD_ATTR)
        record = None if stored is None else TrialRecord.model_validate(stored)
        run = None if record is None else running.get(record.mlflow_run_id or "")
        if record is not None and run is not None:
            _rewrite(context, client, run, record, trial)
            rewritten.append(record.number)
    return rewritten


def _rewrite(context: TrialContext, client: MlflowClient, run: Run, record: TrialRecord, trial: FrozenTrial) -> None:
    run_id = run.info.run_id
    note = "the process stopped before this trial's MLflow run was ended; ended from the Optuna study"
    if STATE_TAG not in run.data.tags:  # its params, metrics and outcome were never written
        note = (
            "the process stopped before this trial's MLflow records were written; rebuilt from the Optuna study "
            "(the objective per epoch kept; the other per-epoch curves and the learning-curve plot are lost)"
        )
        params = trial_run_params(context, record.number, record.hyperparams, record.params)
        metric = OBJECTIVE_METRIC[context.config.search.objective]
        rows = [(metric, value, step) for step, value in sorted(trial.intermediate_values.items())]
        if record.value is not None:
            rows.append(("objective", record.value, max(record.epochs_run - 1, 0)))
        tags = {STATE_TAG: record.state, "stagetune.diagnosis": record.diagnosis or ""}
        if record.fail_reason:
            tags["stagetune.reason"] = record.fail_reason[:5000]
        log_record(client, run_id, params, [row for row in rows if math.isfinite(row[1])], tags)
    log_tags(client, run_id, {RECOVERED_TAG: note})
    completed = trial.datetime_complete or dt.datetime.now()
    end_run(client, run_id, "FAILED" if record.state == "FAIL" else "FINISHED", int(completed.timestamp() * 1000))
