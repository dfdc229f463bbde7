"""The ask/tell loop of a search stage: trials run as Prefect tasks, up to `concurrency` at once."""

import time
from collections.abc import Callable

import optuna
from prefect.futures import PrefectFuture, as_completed

from flows.runners import trial_resources
from schemas.pipeline import SearchStageResult
from schemas.search import TrialRecord
from stagetune import progress
from stagetune.interruption import signals_deferred
from stagetune.stages import search_stage
from stagetune.stages.search_stage import SearchPlan
from tasks.search import train_trial

POLL_SECONDS = 1.0


def run_search(plan: SearchPlan, concurrency: int) -> SearchStageResult:
    """Ask the study for trials, run up to `concurrency` at once as tasks, tell it each outcome.

    The study's budget is shared with any `stagetune worker` processes on the same storage: exactly
    `plan.n_trials` trials are created between them, never more. A trial whose process died (this
    pipeline's earlier attempt, or a worker) is marked FAIL and retried with the same parameters.
    """
    reporter = progress.current()
    reporter.stage_started(plan.stage, f"{plan.sampler}, {plan.context.epochs} epochs", total=plan.n_trials)
    pending: dict[PrefectFuture[TrialRecord], optuna.Trial] = {}
    try:
        _ask_and_tell(plan, concurrency, pending)
    except BaseException:
        # Ctrl-C, SIGTERM or an error: the trials in flight stop at their next epoch and are recorded
        # alike in Optuna and MLflow (finished ones told, interrupted ones failed and retried on resume).
        search_stage.abandon(plan, {trial.number: _waiter(future) for future, trial in pending.items()})
        raise
    result = search_stage.finish(plan)
    best = result.best
    summary = f"{result.counts['COMPLETE']} complete, {result.counts['PRUNED']} pruned, {result.counts['FAIL']} failed"
    if best is not None:
        summary += f"; best #{best.number} {plan.context.config.search.objective}={_value(best)}"
    reporter.stage_finished(plan.stage, summary)
    return result


def _ask_and_tell(plan: SearchPlan, concurrency: int, pending: dict[PrefectFuture[TrialRecord], optuna.Trial]) -> None:
    reporter = progress.current()
    exhausted = False
    while True:
        while not exhausted and len(pending) < concurrency:
            # A stop (Ctrl-C, SIGTERM) lands before the trial is asked or once it is in `pending`: never
            # between, where `abandon` would not know whether it trains.
            with signals_deferred():
                asked = search_stage.ask(plan)
                if asked is None:
                    exhausted = True
                    break
                trial, hp, params = asked
                report = search_stage.pruning_reporter(trial, plan.storage)
                with trial_resources(plan.context.config.execution):  # Dask: one trial per GPU, when asked
                    pending[train_trial.submit(plan.context, trial.number, hp, params, report)] = trial
        search_stage.trials_started(plan)
        if not pending:
            # Nothing of ours in flight: done, unless another process still runs trials, or one of
            # them died and its trial was put back for a retry (then ask again).
            if not search_stage.others_running(plan):
                return
            time.sleep(POLL_SECONDS)
            exhausted = False
            continue
        future = next(as_completed(list(pending)))
        trial = pending[future]
        record = future.result()
        search_stage.tell(plan, trial, record)
        del pending[future]
        reporter.stage_advanced(plan.stage, f"#{record.number} {record.state.lower()} {_value(record)}")


def _waiter(future: PrefectFuture[TrialRecord]) -> Callable[[], TrialRecord | None]:
    def wait() -> TrialRecord | None:
        try:
            return future.result()
        except Exception:  # the trial raised (e.g. invalid settings): reported by the loop's own error
            return None

    return wait


def _value(record: TrialRecord) -> str:
    return "-" if record.value is None else f"{record.value:.4g}"
