"""A search stage in the flow: its trials run as Prefect tasks, up to `concurrency` at once.

The loop itself (`stagetune.stages.search_loop.run_trials`) is shared with `stagetune worker`; this
module only says how a trial runs here.
"""

from collections.abc import Callable

from prefect.futures import PrefectFuture, as_completed
from prefect.utilities.annotations import quote

from flows.runners import trial_resources
from schemas.hyperparams import HyperParams
from schemas.pipeline import SearchStageResult
from schemas.search import TrialRecord
from stagetune import progress
from stagetune.stages.search_loop import record_value, run_trials
from stagetune.stages.search_session import SearchSession
from stagetune.stages.trial import Reporter, TrialContext
from tasks.search import train_trial


def run_search(session: SearchSession, concurrency: int) -> SearchStageResult:
    """Run the stage's trials as tasks until its budget is used up, then summarise it."""
    reporter = progress.current()
    reporter.stage_started(session.stage, f"{session.sampler}, {session.context.epochs} epochs", total=session.n_trials)
    run_trials(session, PrefectTrials(), concurrency)
    result = session.finish()
    best = result.best
    summary = f"{result.counts['COMPLETE']} complete, {result.counts['PRUNED']} pruned, {result.counts['FAIL']} failed"
    if best is not None:
        summary += f"; best #{best.number} {session.context.config.search.objective}={record_value(best)}"
    reporter.stage_finished(session.stage, summary)
    return result


class PrefectTrials:
    """Each trial a `train_trial` task on the flow's task runner (threads, Dask, Ray)."""

    def submit(
        self, context: TrialContext, number: int, hp: HyperParams, params: dict[str, object], report: Reporter
    ) -> PrefectFuture[TrialRecord]:
        # quote(): Prefect would otherwise walk every argument (the config, the arrays, the study behind the
        # reporter) looking for futures to wait on, rebuilding each model it passes: 10-20 ms per trial
        # (bench/README.md, "Profiles"). None of them holds a future; the task gets them unwrapped. Not on
        # Dask: it ships a task's arguments as a graph, where a quote (a named tuple) arrives as a plain tuple.
        execution = context.config.execution
        with trial_resources(execution):  # Dask: one trial per GPU, when asked
            if execution.task_runner == "dask":
                return train_trial.submit(context, number, hp, params, report, return_state=False)
            args = (quote(context), number, quote(hp), quote(params), quote(report))
            return train_trial.submit(*args, return_state=False)

    def first_done(self, handles: list[PrefectFuture[TrialRecord]]) -> PrefectFuture[TrialRecord]:
        return next(as_completed(handles))

    def result(self, handle: PrefectFuture[TrialRecord]) -> TrialRecord:
        return handle.result()

    def waiter(self, handle: PrefectFuture[TrialRecord]) -> Callable[[], TrialRecord | None]:
        def wait() -> TrialRecord | None:
            try:
                return handle.result()
            except Exception:  # the trial raised (e.g. invalid settings): reported by the loop's own error
                return None

        return wait
