"""Narrowing the search space around the best coarse trials: arithmetic, boundaries, limits, fallbacks."""

import math
import random
from typing import Any

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.config import ModelConfig
from schemas.hyperparams import ARCHITECTURE_FIELDS, HyperParams
from schemas.search import HardLimits, Limit, NarrowingReport, NarrowingSettings, ParamChange, TrialRecord
from schemas.search_space import CategoricalParam, FloatParam, IntParam, SearchSpace
from stagetune.errors import InputError
from stagetune.search.narrowing import narrow
from stagetune.search.space import space_violations, suggest_hyperparams

# Everything fixed but adamw's learning rate: each test opens up the parameter it is about.
QUIET = SearchSpace(
    optimizer=CategoricalParam(choices=["adamw"]),
    learning_rate={"adamw": FloatParam(low=1e-4, high=1e-1, scale="log")},
    weight_decay=FloatParam(low=1e-4, high=1e-4, scale="log"),
    momentum=FloatParam(low=0.9, high=0.9),
    dropout=FloatParam(low=0.0, high=0.0),
    batch_size=CategoricalParam(choices=[64]),
    width=IntParam(low=128, high=128),
    depth=IntParam(low=2, high=2),
    channels=CategoricalParam(choices=[32]),
    activation=CategoricalParam(choices=["relu"]),
    batch_norm=CategoricalParam(choices=[False]),
    rebalance=CategoricalParam(choices=["none"]),
)
DEFAULTS = NarrowingSettings()
# A custom factory that says it reads every built-in architecture field.
MODELS = {
    "mlp": ModelConfig(),
    "cnn": ModelConfig(family="cnn"),
    "custom": ModelConfig(
        family="custom", import_path="tests.broken_models:correct_mlp", uses=list(ARCHITECTURE_FIELDS)
    ),
}


def _space(**params: Any) -> SearchSpace:
    return SearchSpace.model_validate({**dict(QUIET), **params})


def _trial(number: int, value: float | None, state: str = "COMPLETE", **hp: Any) -> TrialRecord:
    return TrialRecord.model_validate(
        {"number": number, "state": state, "value": value, "hyperparams": HyperParams(**hp), "params": {}}
    )


def _ranked(field: str, *values: Any) -> list[TrialRecord]:
    """Trials whose objective (to minimise) ranks them in the order given: the first is the best."""
    return [_trial(i, 0.1 * (i + 1), **{field: v}) for i, v in enumerate(values)]


def _change(report: NarrowingReport, name: str) -> ParamChange:
    [change] = [c for c in report.changes if c.name == name]
    return change


def _bounds(space: SearchSpace, field: str) -> tuple[float, float]:
    param = getattr(space, field)
    assert isinstance(param, FloatParam | IntParam)
    return param.low, param.high


def test_log_range_narrows_in_log_space() -> None:
    trials = _ranked("learning_rate", 1e-3, 1e-2, 5e-2)
    space, report = narrow(QUIET, trials, "minimize", NarrowingSettings(top_k=2))
    rate = space.learning_rate["adamw"]
    assert (rate.low, rate.high) == (pytest.approx(10**-3.25), pytest.approx(10**-1.75))
    assert rate.scale == "log"
    change = _change(report, "learning_rate.adamw")
    assert change.action == "narrowed"
    assert "top 2 trials span 0.001..0.01 (log); best 0.001" in change.reason
    assert "new range 0.000562..0.0178 (margin 25%)" in change.reason
    assert report.top_trials == [0, 1]
    assert not report.fallback


def test_linear_range_narrows_with_margin() -> None:
    trials = _ranked("dropout", 0.2, 0.4, 0.7)
    space, report = narrow(
        _space(dropout=FloatParam(low=0.0, high=0.8)), trials, "minimize", NarrowingSettings(top_k=2)
    )
    assert _bounds(space, "dropout") == (pytest.approx(0.15), pytest.approx(0.45))
    assert _change(report, "dropout").action == "narrowed"


def test_integer_ranges_round_outward() -> None:
    depth = _space(depth=IntParam(low=1, high=9))
    space, _ = narrow(depth, _ranked("depth", 4, 6, 9), "minimize", NarrowingSettings(top_k=2))
    assert _bounds(space, "depth") == (3, 7)  # 3.5..6.5 rounded outward
    width = _space(width=IntParam(low=16, high=1024, scale="log"))
    space, _ = narrow(width, _ranked("width", 64, 256, 1000), "minimize", NarrowingSettings(top_k=2))
    lo, hi = math.log10(64), math.log10(256)
    expected = (math.floor(10 ** (lo - 0.25 * (hi - lo))), math.ceil(10 ** (hi + 0.25 * (hi - lo))))
    assert _bounds(space, "width") == expected == (45, 363)
    assert isinstance(space.width, IntParam)


def test_minimum_width_is_centred_on_the_top_values() -> None:
    trials = _ranked("dropout", 0.4, 0.41, 0.8)
    top2 = NarrowingSettings(top_k=2)
    space, report = narrow(_space(dropout=FloatParam(low=0.0, high=0.8)), trials, "minimize", top2)
    assert _bounds(space, "dropout") == (pytest.approx(0.365), pytest.approx(0.445))  # 10% of 0.8 around 0.405
    assert "minimum width 10%" in _change(report, "dropout").reason


def test_best_value_at_the_lower_boundary_widens_outward() -> None:
    trials = _ranked("dropout", 0.31, 0.5, 0.55)
    space, report = narrow(_space(dropout=FloatParam(low=0.3, high=0.7)), trials, "minimize", NarrowingSettings())
    low, high = _bounds(space, "dropout")
    assert low == pytest.approx(0.1)  # 0.3 - 0.5 * 0.4: moved out, not shrunk to 0.31
    assert high == pytest.approx(0.55 + 0.25 * 0.24)
    change = _change(report, "dropout")
    assert change.action == "widened_low"
    assert "best value 0.31 sits at the lower boundary 0.3: widened to 0.1" in change.reason
    assert report.hard_limits_hit == []


def test_lower_boundary_widening_stops_at_the_hard_limit() -> None:
    trials = _ranked("dropout", 0.0, 0.2, 0.3)
    space, report = narrow(_space(dropout=FloatParam(low=0.0, high=0.5)), trials, "minimize", NarrowingSettings())
    assert _bounds(space, "dropout") == (0.0, pytest.approx(0.375))  # low kept at 0: never shrunk
    assert report.hard_limits_hit == ["dropout.low: -0.25 clipped to the hard limit 0"]
    assert "lower boundary 0" in _change(report, "dropout").reason
    assert "clipped to the hard limit" in _change(report, "dropout").reason


def test_integer_boundary_widening_is_clipped_and_kept_non_negative() -> None:
    space, report = narrow(_space(depth=IntParam(low=1, high=9)), _ranked("depth", 1, 3, 4), "minimize", DEFAULTS)
    assert _bounds(space, "depth") == (0, 5)  # 1 - 4 clipped to the hard limit 0 (a linear model); 4 + 0.75 up
    assert report.hard_limits_hit == ["depth.low: -3 clipped to the hard limit 0"]


def test_best_value_at_the_upper_boundary_widens_outward() -> None:
    trials = _ranked("weight_decay", 9e-5, 1e-5, 3e-5)
    space, report = narrow(
        _space(weight_decay=FloatParam(low=1e-6, high=1e-4, scale="log")), trials, "minimize", NarrowingSettings()
    )
    low, high = _bounds(space, "weight_decay")
    assert high == pytest.approx(1e-3)  # 10**(-4 + 0.5 * 2)
    assert low == pytest.approx(10 ** (-5 - 0.25 * (math.log10(9e-5) + 5)))
    assert _change(report, "weight_decay").action == "widened_high"


def test_upper_boundary_widening_is_clipped_to_the_hard_limit() -> None:
    space = _space(learning_rate={"adamw": FloatParam(low=1e-3, high=0.5, scale="log")})
    new, report = narrow(space, _ranked("learning_rate", 0.45, 0.1, 0.2), "minimize", NarrowingSettings())
    assert new.learning_rate["adamw"].high == 1.0
    assert report.hard_limits_hit == ["learning_rate.adamw.high: 11.2 clipped to the hard limit 1"]
    assert _change(report, "learning_rate.adamw").action == "widened_high"
    custom = NarrowingSettings(hard_limits=HardLimits(learning_rate=Limit(low=1e-6, high=0.8)))
    new, _ = narrow(space, _ranked("learning_rate", 0.45, 0.1, 0.2), "minimize", custom)
    assert new.learning_rate["adamw"].high == 0.8


def test_only_the_best_trial_triggers_the_boundary_rule() -> None:
    trials = _ranked("dropout", 0.4, 0.79, 0.1)
    space, report = narrow(
        _space(dropout=FloatParam(low=0.0, high=0.8)), trials, "minimize", NarrowingSettings(top_k=2)
    )
    assert _bounds(space, "dropout") == (pytest.approx(0.4 - 0.25 * 0.39), 0.8)  # high stays at the old bound
    assert _change(report, "dropout").action == "narrowed"


def test_categoricals_keep_the_seen_choices_in_the_old_order() -> None:
    space = _space(
        activation=CategoricalParam(choices=["relu", "tanh", "gelu"]),
        batch_size=CategoricalParam(choices=[32, 64, 128, 256]),
        batch_norm=CategoricalParam(choices=[False, True]),
    )
    trials = [
        _trial(0, 0.1, activation="gelu", batch_size=128, batch_norm=True),
        _trial(1, 0.2, activation="relu", batch_size=32, batch_norm=True),
        _trial(2, 0.9, activation="tanh", batch_size=64, batch_norm=False),
    ]
    new, report = narrow(space, trials, "minimize", NarrowingSettings(top_k=2))
    assert new.activation.choices == ["relu", "gelu"]
    assert new.batch_size == CategoricalParam(choices=[32, 128])
    assert new.batch_norm.choices == [True]
    assert _change(report, "activation").action == "choices_reduced"
    new, report = narrow(space, trials, "minimize", NarrowingSettings(top_k=3))
    assert new.activation.choices == ["relu", "tanh", "gelu"]
    assert _change(report, "activation").action == "kept"
    assert _change(report, "rebalance").action == "fixed"


MIXED = _space(
    optimizer=CategoricalParam(choices=["adamw", "adam", "sgd"]),
    learning_rate={
        "adamw": FloatParam(low=1e-4, high=1e-1, scale="log"),
        "adam": FloatParam(low=1e-4, high=1e-1, scale="log"),
        "sgd": FloatParam(low=3e-3, high=3e-1, scale="log"),
    },
    momentum=FloatParam(low=0.5, high=0.99),
)


def test_learning_rates_narrow_per_optimizer_and_unused_optimizers_drop_out() -> None:
    trials = [
        _trial(0, 0.1, optimizer="adamw", learning_rate=1e-3, momentum=0.95),
        _trial(1, 0.2, optimizer="sgd", learning_rate=0.03, momentum=0.6),
        _trial(2, 0.3, optimizer="adamw", learning_rate=1e-2, momentum=0.95),
        _trial(3, 0.9, optimizer="adam", learning_rate=1e-3),
    ]
    new, report = narrow(MIXED, trials, "minimize", NarrowingSettings(top_k=3))
    assert new.optimizer.choices == ["adamw", "sgd"]
    assert (new.learning_rate["adamw"].low, new.learning_rate["adamw"].high) == (
        pytest.approx(10**-3.25),
        pytest.approx(10**-1.75),
    )
    sgd = new.learning_rate["sgd"]  # one trial: a window of 10% of the old 2 decades around it
    assert (sgd.low, sgd.high) == (pytest.approx(0.03 * 10**-0.1), pytest.approx(0.03 * 10**0.1))
    assert new.learning_rate["adam"] == MIXED.learning_rate["adam"]
    assert "no top trial used adam" in _change(report, "learning_rate.adam").reason
    # Momentum from the SGD trial alone (the AdamW trials' 0.95 is their unused base value).
    assert _bounds(new, "momentum") == (pytest.approx(0.6 - 0.0245), pytest.approx(0.6 + 0.0245))


def test_momentum_is_left_alone_without_an_sgd_top_trial() -> None:
    trials = [_trial(0, 0.1, optimizer="adamw"), _trial(1, 0.2, optimizer="adam"), _trial(2, 0.9, optimizer="sgd")]
    new, report = narrow(MIXED, trials, "minimize", NarrowingSettings(top_k=2))
    assert new.momentum == MIXED.momentum
    assert _change(report, "momentum").action == "kept"
    assert "sgd" in _change(report, "momentum").reason
    assert new.optimizer.choices == ["adamw", "adam"]


def test_pruned_and_failed_trials_are_ignored() -> None:
    space = _space(dropout=FloatParam(low=0.0, high=0.8))
    trials = _ranked("dropout", 0.2, 0.4, 0.7)
    others = [_trial(10, 0.0, "PRUNED", dropout=0.75), _trial(11, None, "FAIL", dropout=0.05)]
    expected, _ = narrow(space, trials, "minimize", NarrowingSettings(top_k=2))
    new, report = narrow(space, others + trials, "minimize", NarrowingSettings(top_k=2))
    assert new == expected
    assert report.top_trials == [0, 1]
    assert report.n_completed == 3
    assert "2 other trial(s) ignored" in report.reason


def test_too_few_completed_trials_fall_back_to_the_unchanged_space() -> None:
    space = _space(dropout=FloatParam(low=0.0, high=0.8))
    trials = [*_ranked("dropout", 0.2, 0.4), _trial(5, 0.05, "PRUNED"), _trial(6, None, "FAIL")]
    new, report = narrow(space, trials, "minimize", NarrowingSettings(min_completed=3))
    assert new == space
    assert report.fallback
    assert report.n_completed == 2
    assert report.reason == "only 2 completed trial(s) of 4, 3 required: search space left unchanged"
    assert report.changes == []


def test_top_quantile_replaces_top_k() -> None:
    trials = _ranked("dropout", *[0.01 * i for i in range(25)])
    space = _space(dropout=FloatParam(low=0.0, high=0.5))
    _, report = narrow(space, trials, "minimize", NarrowingSettings(top_k=20, top_quantile=0.28))
    assert report.top_trials == list(range(7))  # 0.28 * 25 is 7.000000000000001 in floats: still 7
    _, report = narrow(space, trials, "minimize", NarrowingSettings(top_quantile=0.01))
    assert report.top_trials == [0, 1]  # at least two trials


def test_maximize_takes_the_highest_values_and_ties_go_to_the_lower_number() -> None:
    trials = [_trial(7, 0.9, dropout=0.3), _trial(3, 0.9, dropout=0.1), _trial(1, 0.5), _trial(2, 0.2)]
    _, report = narrow(_space(dropout=FloatParam(low=0.0, high=0.5)), trials, "maximize", NarrowingSettings(top_k=2))
    assert report.top_trials == [3, 7]
    assert report.direction == "maximize"


def _coarse_trials(family: str, n: int = 25) -> tuple[SearchSpace, list[TrialRecord]]:
    space = SearchSpace(
        channels=CategoricalParam(choices=[8, 16, 32, 64, 128]), momentum=FloatParam(low=0.5, high=0.99)
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    trials = []
    for number in range(n):
        hp = suggest_hyperparams(study.ask(), space, MODELS[family])
        value = random.Random(number).random()
        trials.append(TrialRecord(number=number, state="COMPLETE", value=value, hyperparams=hp, params={}))
    return space, trials


def test_same_inputs_in_any_order_give_the_same_output() -> None:
    space, trials = _coarse_trials("custom")
    first = narrow(space, trials, "minimize", DEFAULTS, MODELS["custom"])
    shuffled = list(trials)
    random.Random(0).shuffle(shuffled)
    for again in (
        narrow(space, trials, "minimize", DEFAULTS, MODELS["custom"]),
        narrow(space, shuffled, "minimize", DEFAULTS, MODELS["custom"]),
    ):
        assert again == first
        assert again[0].model_dump_json() == first[0].model_dump_json()
    assert SearchSpace.model_validate(first[0].model_dump()) == first[0]


@pytest.mark.parametrize("family", ["mlp", "cnn", "custom"])
def test_the_top_trials_lie_inside_the_narrowed_space(family: str) -> None:
    # So the refinement can warm-start with them (optuna_params refuses points outside the space).
    space, trials = _coarse_trials(family, n=40)
    new, report = narrow(space, trials, "minimize", NarrowingSettings(top_k=8), MODELS[family])
    assert len(report.top_trials) == 8
    top = [t for t in trials if t.number in report.top_trials]
    assert [space_violations(t.hyperparams, new, MODELS[family]) for t in top] == [[]] * 8
    assert any(space_violations(t.hyperparams, new, MODELS[family]) for t in trials if t not in top)  # it did narrow


@pytest.mark.parametrize(
    ("family", "unsampled", "sampled"), [("mlp", "channels", "width"), ("cnn", "width", "channels")]
)
def test_fields_the_family_does_not_sample_stay_unchanged(family: str, unsampled: str, sampled: str) -> None:
    space, trials = _coarse_trials(family)
    new, report = narrow(space, trials, "minimize", DEFAULTS, MODELS[family])
    assert getattr(new, unsampled) == getattr(space, unsampled)
    assert _change(report, unsampled).action == "kept"
    assert f"not sampled for model family '{family}'" in _change(report, unsampled).reason
    assert getattr(new, sampled) != getattr(space, sampled)
    _, report = narrow(space, trials, "minimize", DEFAULTS, MODELS["custom"])
    assert _change(report, unsampled).action != "kept"


def test_bad_direction_family_and_settings_are_errors() -> None:
    with pytest.raises(ValueError, match="direction"):
        narrow(QUIET, [], "lowest", DEFAULTS)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown model family"):
        narrow(QUIET, [], "minimize", DEFAULTS, ModelConfig(family="rnn"))
    with pytest.raises(ValidationError, match="low < high"):
        Limit(low=1.0, high=1.0)
    with pytest.raises(ValidationError, match="top_quantile"):
        NarrowingSettings(top_quantile=0)
    with pytest.raises(ValidationError, match="hard_limit"):
        NarrowingSettings.model_validate({"hard_limit": {}})


@settings(max_examples=200, deadline=None)
@given(
    log=st.booleans(),
    bounds=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2).map(sorted).filter(lambda b: b[1] - b[0] > 0.01),
    positions=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6),
    margin=st.floats(0.0, 1.0),
    min_width=st.floats(0.01, 1.0),
)
def test_narrowed_ranges_keep_the_top_values_and_respect_the_rules(
    log: bool, bounds: list[float], positions: list[float], margin: float, min_width: float
) -> None:
    # A learning-rate range inside 1e-5..1e-1 (log) or a dropout range inside 0..0.8 (linear).
    to_raw = (lambda u: 10 ** (-5 + 4 * u)) if log else (lambda u: 0.8 * u)
    fwd = math.log10 if log else float
    old = FloatParam(low=to_raw(bounds[0]), high=to_raw(bounds[1]), scale="log" if log else "linear")
    values = [min(max(to_raw(bounds[0] + p * (bounds[1] - bounds[0])), old.low), old.high) for p in positions]
    field = "learning_rate" if log else "dropout"
    space = _space(learning_rate={"adamw": old}) if log else _space(dropout=old)
    s = NarrowingSettings(top_k=len(values), margin=margin, min_width=min_width, min_completed=1)
    new_space, report = narrow(space, _ranked(field, *values), "minimize", s)
    new = new_space.learning_rate["adamw"] if log else new_space.dropout
    assert isinstance(new, FloatParam)
    assert new.low <= min(values)
    assert max(values) <= new.high
    limit = getattr(s.hard_limits, field)
    assert limit.low <= new.low
    assert new.high <= limit.high
    width = fwd(old.high) - fwd(old.low)
    clipped = bool(report.hard_limits_hit)
    assert clipped or fwd(new.high) - fwd(new.low) >= min_width * width * (1 - 1e-9) - 1e-12
    band = s.boundary_fraction * width
    if new.low < old.low:  # beyond the old range only through the boundary rule, at the best value
        assert fwd(values[0]) - fwd(old.low) <= band
    if new.high > old.high:
        assert fwd(old.high) - fwd(values[0]) <= band
