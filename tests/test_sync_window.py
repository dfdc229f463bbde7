"""Trials decided in sync windows: trial n's sampler and pruner see exactly the trials numbered below
(n // window) * window, whatever else the study holds when it is asked."""

import pickle
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.pruners import HyperbandPruner, MedianPruner
from optuna.trial import TrialState, create_trial

from stagetune.search.budget import Blocked, claim_trial
from stagetune.search.optuna_private import study_view
from stagetune.search.study import SamplerKind, make_pruner, make_sampler, open_storage
from stagetune.search.sync_window import WindowedPruner, cutoff, next_number, unfinished_before

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
X = FloatDistribution(-5.0, 5.0)
Y = FloatDistribution(-5.0, 5.0)


def _complete(study: optuna.Study, x: float, y: float, value: float | None = None) -> None:
    value = x * x + y * y if value is None else value
    study.add_trial(create_trial(params={"x": x, "y": y}, distributions={"x": X, "y": Y}, value=value))


def test_cutoff_is_the_start_of_the_trial_s_window() -> None:
    assert [cutoff(n, 4) for n in range(9)] == [0, 0, 0, 0, 4, 4, 4, 4, 8]
    assert [cutoff(n, 1) for n in range(3)] == [0, 1, 2]


def test_the_view_hides_trials_at_and_after_the_cutoff_and_delegates_the_rest() -> None:
    study = optuna.create_study(study_name="v", direction="maximize")
    for i in range(6):
        _complete(study, float(i), 0.0)
    view = study_view(study, 4)
    assert [t.number for t in view.get_trials()] == [0, 1, 2, 3]
    assert [t.number for t in view.trials] == [0, 1, 2, 3]
    for use_cache in (False, True):
        listed = view._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=use_cache)
        assert [t.number for t in listed] == [0, 1, 2, 3]
    assert view.direction == study.direction
    assert view.study_name == "v"
    assert view.get_trials(deepcopy=True)[0] is not study.get_trials(deepcopy=False)[0]


def _draw(kind: SamplerKind, window: int | None, later: str) -> dict[str, float]:
    """Trial 6's point after trials 0-3 (seeded points) and trials 4-5 in the state `later` says."""
    study = optuna.create_study(sampler=make_sampler(kind, seed=5, n_startup_trials=3, sync_window=window))
    for i in range(4):
        _complete(study, i - 1.5, 1.0 - i)
    for i in range(2):
        if later == "complete":
            _complete(study, 4.0 - i, -4.0 + i, value=-10.0)  # the best trials so far
        else:  # still running: asked with fixed points, never told
            study.enqueue_trial({"x": 4.0 - i, "y": -4.0 + i})
            trial = study.ask()
            trial.suggest_float("x", -5.0, 5.0)
            trial.suggest_float("y", -5.0, 5.0)
    trial = study.ask()
    assert trial.number == 6
    return {"x": trial.suggest_float("x", -5.0, 5.0), "y": trial.suggest_float("y", -5.0, 5.0)}


@pytest.mark.parametrize("kind", ["tpe", "gp"])
def test_a_model_based_draw_does_not_depend_on_the_trials_after_the_cutoff(kind: SamplerKind) -> None:
    assert _draw(kind, 4, "complete") == _draw(kind, 4, "running")
    # Without a window the model learns from trials 4 and 5 once they finish: the draw moves.
    assert _draw(kind, None, "complete") != _draw(kind, None, "running")


def _median_study(pruner: optuna.pruners.BasePruner) -> tuple[optuna.Study, optuna.Trial]:
    """Trials 0-1 complete at 1.0, trial 2 running, trials 3-5 complete at 0.1 (minimise)."""
    study = optuna.create_study(pruner=pruner)
    for value in (1.0, 1.0):
        study.add_trial(
            create_trial(
                params={"x": 0.0}, distributions={"x": X}, value=value, intermediate_values={0: value, 1: value}
            )
        )
    running = study.ask()
    for _ in range(3):
        study.add_trial(
            create_trial(params={"x": 0.0}, distributions={"x": X}, value=0.1, intermediate_values={0: 0.1, 1: 0.1})
        )
    running.report(0.5, 0)
    running.report(0.5, 1)
    return study, running


def test_the_pruner_compares_a_trial_with_its_window_s_past_only() -> None:
    plain = MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    _, trial = _median_study(plain)
    assert trial.should_prune()  # the median of all five finished trials is 0.1
    _, trial = _median_study(WindowedPruner(MedianPruner(n_startup_trials=1, n_warmup_steps=0), 2))
    assert not trial.should_prune()  # trial 2 sees trials 0 and 1 only: median 1.0


def _hyperband_states(pruner: optuna.pruners.BasePruner) -> list[TrialState]:
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5.0, 5.0)
        for step in range(9):
            trial.report(x * x + 1.0 / (step + 1), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return x * x

    # One name for both: Hyperband assigns a trial's bracket from the study's name and the trial's number.
    study = optuna.create_study(study_name="hb", sampler=optuna.samplers.RandomSampler(seed=3), pruner=pruner)
    study.optimize(objective, n_trials=30)
    return [t.state for t in study.get_trials()]


def test_windowed_hyperband_run_sequentially_with_window_one_decides_as_optuna_s_own() -> None:
    ours = _hyperband_states(WindowedPruner(HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3), 1))
    optuna_s = _hyperband_states(HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3))
    assert ours == optuna_s
    assert TrialState.PRUNED in ours


def test_make_pruner_wraps_the_configured_pruner_in_the_window() -> None:
    pruner = make_pruner("median", 5, sync_window=3)
    assert isinstance(pruner, WindowedPruner)
    assert isinstance(pruner.pruner, MedianPruner)
    assert pruner.window == 3
    assert isinstance(make_pruner("hyperband", 5), HyperbandPruner)


def test_the_next_trial_waits_for_its_window_s_past(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    study = optuna.create_study(study_name="w", storage=open_storage(url))
    first = [claim_trial(study, url, 10, sync_window=2) for _ in range(2)]
    assert all(isinstance(t, optuna.Trial) for t in first)
    blocked = claim_trial(study, url, 10, sync_window=2)
    assert blocked == Blocked([0, 1])
    study.tell(0, 1.0)
    assert claim_trial(study, url, 10, sync_window=2) == Blocked([1])
    study.tell(1, state=TrialState.PRUNED)
    third = claim_trial(study, url, 10, sync_window=2)
    assert isinstance(third, optuna.Trial)
    assert third.number == 2
    assert next_number(study.get_trials()) == 3
    # An enqueued trial is asked next, and waits for its own window's past like any other.
    study.enqueue_trial({"x": 0.0})
    assert next_number(study.get_trials()) == 3
    assert unfinished_before(study.get_trials(), 2) == []
    assert claim_trial(study, url, 3, sync_window=2) is None  # the budget is checked first


def test_the_windowed_pruner_travels_to_a_dask_worker() -> None:
    """A pruning reporter carries the study's pruner to the process that trains (pickled)."""
    copy = pickle.loads(pickle.dumps(make_pruner("hyperband", 9, sync_window=4)))
    assert isinstance(copy, WindowedPruner)
    assert isinstance(copy.pruner, HyperbandPruner)
    assert copy.window == 4
