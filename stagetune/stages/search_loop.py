"""The one ask/run/tell loop of a search stage, for the pipeline's flow and for `stagetune worker`.

What differs between them is how a trial runs: the flow submits each as a Prefect task (several at
once, `flows/search.py`), a worker trains one at a time in its own thread (`InlineTrials`). Both
give a `TrialRunner`; the loop does the rest: the exact shared budget, retries of dead processes'
trials, and a consistent stop (Ctrl-C, SIGTERM, an error) through `SearchSession.abandon`.
"""

import time
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

import optuna

from schemas.hyperparams import HyperParams
from schemas.search import TrialRecord
from stagetune import progress
from stagetune.interruption import signals_deferred
from stagetune.search.budget import Blocked
from stagetune.search.sync_window import effective_concurrency
from stagetune.stages.search_session import SearchSession, Waiter
from stagetune.stages.trial import Reporter, TrialContext, run_trial

POLL_SECONDS = 1.0
Handle = TypeVar("Handle", bound=Hashable)


class TrialRunner(Protocol, Generic[Handle]):
    """Starts trials and hands back their records."""

    def submit(
        self, context: TrialContext, number: int, hp: HyperParams, params: dict[str, object], report: Reporter
    ) -> Handle:
        """Start (or schedule) one trial; must return at once, without training in the caller's thread."""
        ...

    def first_done(self, handles: list[Handle]) -> Handle:
        """Wait until one of `handles` has its record (or raised) and return it."""
        ...

    def result(self, handle: Handle) -> TrialRecord:
        """The trial's record (raises what the trial raised)."""
        ...

    def waiter(self, handle: Handle) -> Waiter:
        """For a stopping search: a call that waits for the record (None if the trial raised), or None
        when the trial never started."""
        ...


def run_trials(
    session: SearchSession, runner: TrialRunner[Handle], concurrency: int, wait_for_others: bool = True
) -> None:
    """Ask the study for trials, run up to `concurrency` at once, tell it each outcome, until its budget is used.

    With the session's sync window, trial n is asked only once every trial numbered below its window's
    start has finished (here or in another process): meanwhile this loop waits for its own trials, or
    polls the storage when it runs none. At most `sync_window` trials then run at once.

    The budget is shared with every process on the study's storage: exactly `session.n_trials` trials
    are created between them, never more. A trial whose process died is marked FAIL and retried with
    the same parameters. With `wait_for_others`, the loop ends only once no process runs or waits to
    run a trial of the study (the stage's owner, which then summarises it); without, once the budget is
    used up and this process's trials are told (a worker).
    """
    pending: dict[Handle, optuna.Trial] = {}
    if session.sync_window is not None:
        concurrency = effective_concurrency(concurrency, session.sync_window, session.stage)
    try:
        _ask_and_tell(session, runner, concurrency, wait_for_others, pending)
    except BaseException:
        # Ctrl-C, SIGTERM or an error: the trials in flight stop at their next epoch and are recorded
        # alike in Optuna and MLflow (finished ones told, interrupted ones failed and retried on resume).
        session.abandon({trial.number: runner.waiter(handle) for handle, trial in pending.items()})
        raise


def _ask_and_tell(
    session: SearchSession,
    runner: TrialRunner[Handle],
    concurrency: int,
    wait_for_others: bool,
    pending: dict[Handle, optuna.Trial],
) -> None:
    reporter = progress.current()
    exhausted = False
    while True:
        blocked = False
        while not exhausted and len(pending) < concurrency:
            # A stop (Ctrl-C, SIGTERM) lands before the trial is asked or once it is in `pending`: never
            # between, where `abandon` would not know whether it trains.
            with signals_deferred():
                asked = session.ask()
                if asked is None:
                    exhausted = True
                    break
                if isinstance(asked, Blocked):
                    blocked = True  # the sync window's past still runs: wait for a trial to finish
                    break
                trial, hp, params = asked
                report = session.pruning_reporter(trial)
                pending[runner.submit(session.context, trial.number, hp, params, report)] = trial
        session.trials_started()
        if not pending and blocked:
            time.sleep(POLL_SECONDS)  # only other processes' trials hold the next one back (polled in `ask`)
            continue
        if not pending:
            # Nothing of ours in flight: done, unless another process still runs trials, or one of
            # them died and its trial was put back for a retry (then ask again).
            if not wait_for_others or not session.others_running():
                return
            time.sleep(POLL_SECONDS)
            exhausted = False
            continue
        handle = runner.first_done(list(pending))
        record = runner.result(handle)
        session.tell(pending[handle], record)
        del pending[handle]
        reporter.stage_advanced(session.stage, f"#{record.number} {record.state.lower()} {record_value(record)}")


def record_value(record: TrialRecord) -> str:
    """The trial's objective value as progress lines show it."""
    return "-" if record.value is None else f"{record.value:.4g}"


class InlineTrial:
    """A trial trained in the caller's thread when its record is first asked for."""

    def __init__(self, train: Callable[[], TrialRecord]) -> None:
        self._train: Callable[[], TrialRecord] | None = train
        self._record: TrialRecord | None = None
        self._error: BaseException | None = None

    @property
    def started(self) -> bool:
        return self._train is None

    def result(self) -> TrialRecord:
        if self._train is not None:
            train, self._train = self._train, None
            try:
                self._record = train()
            except BaseException as error:
                self._error = error
                raise
        if self._error is not None:
            raise self._error
        assert self._record is not None
        return self._record


class InlineTrials:
    """Runs one trial at a time in this thread, when the loop reads its result (where a stop can land)."""

    def submit(
        self, context: TrialContext, number: int, hp: HyperParams, params: dict[str, object], report: Reporter
    ) -> InlineTrial:
        return InlineTrial(lambda: run_trial(context, number, hp, params, report))

    def first_done(self, handles: list[InlineTrial]) -> InlineTrial:
        return handles[0]  # one at a time: it trains when the loop reads its result

    def result(self, handle: InlineTrial) -> TrialRecord:
        return handle.result()

    def waiter(self, handle: InlineTrial) -> Waiter:
        if not handle.started:
            return None

        def wait() -> TrialRecord | None:
            try:
                return handle.result()
            except BaseException:  # it raised: reported by the loop's own error
                return None

        return wait
