"""The ask/tell loop of a search stage: trials run as Prefect tasks, up to `concurrency` at once."""

import optuna
from prefect.futures import PrefectFuture, as_completed

from schemas.pipeline import SearchStageResult
from schemas.search import TrialRecord
from stagetune import progress
from stagetune.stages import search_stage
from stagetune.stages.search_stage import SearchPlan
from tasks.search import train_trial


def run_search(plan: SearchPlan, concurrency: int) -> SearchStageResult:
    """Ask the study for trials, run up to `concurrency` at once as tasks, tell it each outcome.

    Exactly `plan.n_trials` trials are asked, so the stage's budget is never overshot.
    """
    reporter = progress.current()
    reporter.stage_started(plan.stage, f"{plan.sampler}, {plan.context.epochs} epochs", total=plan.n_trials)
    pending: dict[PrefectFuture[TrialRecord], optuna.Trial] = {}
    asked = 0
    while asked < plan.n_trials or pending:
        while asked < plan.n_trials and len(pending) < concurrency:
            trial, hp, params = search_stage.ask(plan)
            report = search_stage.pruning_reporter(trial)
            pending[train_trial.submit(plan.context, trial.number, hp, params, report)] = trial
            asked += 1
        future = next(as_completed(list(pending)))
        trial = pending.pop(future)
        record = future.result()
        search_stage.tell(plan, trial, record)
        reporter.stage_advanced(plan.stage, f"#{record.number} {record.state.lower()} {_value(record)}")
    result = search_stage.finish(plan)
    best = result.best
    summary = f"{result.counts['COMPLETE']} complete, {result.counts['PRUNED']} pruned, {result.counts['FAIL']} failed"
    if best is not None:
        summary += f"; best #{best.number} {plan.context.config.search.objective}={_value(best)}"
    reporter.stage_finished(plan.stage, summary)
    return result


def _value(record: TrialRecord) -> str:
    return "-" if record.value is None else f"{record.value:.4g}"
