"""The one search loop (`run_trials`) as `stagetune worker` drives it: trials one at a time, each told,
and a stop that hands the session exactly what it must settle."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from schemas.search import TrialRecord
from stagetune.search.budget import Blocked
from stagetune.search.sync_window import cutoff
from stagetune.stages import search_loop
from stagetune.stages.search_loop import InlineTrial, InlineTrials, run_trials


@dataclass
class FakeTrial:
    number: int


@dataclass
class FakeSession:
    """Stands in for `SearchSession`: a budget of `n_trials`, and what the loop asked of it."""

    n_trials: int
    others: list[bool] = field(default_factory=list)  # successive answers of others_running
    stage: str = "coarse"
    context: object = None
    asked: list[int] = field(default_factory=list)
    told: list[int] = field(default_factory=list)
    abandoned: dict[int, Any] | None = None
    others_asked: int = 0
    sync_window: int | None = None

    def ask(self) -> tuple[FakeTrial, object, dict[str, object]] | None:
        if len(self.asked) >= self.n_trials:
            return None
        self.asked.append(len(self.asked))
        return FakeTrial(self.asked[-1]), None, {}

    def pruning_reporter(self, trial: FakeTrial) -> Callable[[int, float], bool]:
        return lambda epoch, value: False

    def trials_started(self) -> None:
        pass

    def others_running(self) -> bool:
        self.others_asked += 1
        return self.others.pop(0) if self.others else False

    def tell(self, trial: FakeTrial, record: TrialRecord) -> None:
        assert record.number == trial.number
        self.told.append(trial.number)

    def abandon(self, waiters: dict[int, Any]) -> None:
        self.abandoned = waiters


class ScriptedTrials(InlineTrials):
    """Inline trials whose training is `train(number)` instead of a model's."""

    def __init__(self, train: Callable[[int], TrialRecord]) -> None:
        self.train = train
        self.trained: list[int] = []

    def submit(self, context: Any, number: int, hp: Any, params: Any, report: Any) -> InlineTrial:
        def run() -> TrialRecord:
            self.trained.append(number)
            return self.train(number)

        return InlineTrial(run)


def _record(number: int) -> TrialRecord:
    # Only the number and state matter to the loop: no hyperparameters to validate.
    return TrialRecord.model_construct(number=number, state="COMPLETE", value=0.5)


def test_a_worker_runs_its_trials_one_at_a_time_until_the_budget_is_used() -> None:
    session = FakeSession(n_trials=3)
    runner = ScriptedTrials(_record)
    run_trials(session, runner, concurrency=1, wait_for_others=False)  # type: ignore[arg-type]
    assert runner.trained == [0, 1, 2]
    assert session.told == [0, 1, 2]
    assert session.others_asked == 0  # a worker leaves once the budget is used up
    assert session.abandoned is None


def test_the_stage_owner_waits_for_other_processes_and_asks_again() -> None:
    session = FakeSession(n_trials=2, others=[True, False])
    run_trials(session, ScriptedTrials(_record), concurrency=2)  # type: ignore[arg-type]
    assert session.told == [0, 1]
    assert session.others_asked == 2  # still running elsewhere, then done


def test_a_stop_during_a_trial_hands_the_session_each_trial_in_flight() -> None:
    def train(number: int) -> TrialRecord:
        if number == 0:
            raise KeyboardInterrupt  # Ctrl-C / SIGTERM while trial 0 trains
        return _record(number)

    session = FakeSession(n_trials=5)
    runner = ScriptedTrials(train)
    with pytest.raises(KeyboardInterrupt):
        run_trials(session, runner, concurrency=2)  # type: ignore[arg-type]
    assert runner.trained == [0]  # trial 1 was asked and handed over, never trained
    assert session.abandoned is not None
    assert set(session.abandoned) == {0, 1}
    waiter = session.abandoned[0]
    assert waiter is not None
    assert waiter() is None  # it raised: left RUNNING for the dead-trial search
    assert session.abandoned[1] is None  # asked, never started: the session fails and retries it
    assert runner.trained == [0]  # settling never trains a trial


@dataclass
class WindowedSession(FakeSession):
    """Answers `Blocked` while a trial below the next trial's window start is untold (as `claim_trial` does),
    or for the first `held_elsewhere` asks (trials of another process still running)."""

    held_elsewhere: int = 0
    in_flight: list[int] = field(default_factory=list)  # trials asked and not told, at each ask
    blocked: int = 0

    def ask(self) -> Any:
        assert self.sync_window is not None
        following = len(self.asked)
        untold = [n for n in range(cutoff(following, self.sync_window)) if n not in self.told]
        if self.held_elsewhere or (untold and following < self.n_trials):
            self.held_elsewhere = max(0, self.held_elsewhere - 1)
            self.blocked += 1
            return Blocked(untold)
        asked = super().ask()
        self.in_flight.append(len(self.asked) - len(self.told))
        return asked


def test_the_next_window_is_asked_once_every_trial_before_it_is_told() -> None:
    session = WindowedSession(n_trials=5, sync_window=2)
    runner = ScriptedTrials(_record)
    run_trials(session, runner, concurrency=3)  # type: ignore[arg-type]
    assert session.told == [0, 1, 2, 3, 4]
    assert session.blocked >= 2  # trials 2 and 4 waited for their window's past
    assert max(session.in_flight) == 2  # concurrency capped at the window


def test_a_loop_with_nothing_in_flight_polls_until_other_processes_finish_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(search_loop, "POLL_SECONDS", 0.0)
    session = WindowedSession(n_trials=2, sync_window=4, held_elsewhere=3)
    run_trials(session, ScriptedTrials(_record), concurrency=2, wait_for_others=False)  # type: ignore[arg-type]
    assert session.blocked == 3
    assert session.told == [0, 1]
