"""The search space as Optuna params: what is suggested, under which names, and the exact inverse."""

from typing import Any

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.trial import FixedTrial
from pydantic import ValidationError

from schemas.config import ModelConfig
from schemas.hyperparams import ARCHITECTURE_FIELDS, HyperParams
from schemas.search_space import CategoricalParam, FloatParam, IntParam, SearchSpace
from stagetune.errors import InputError
from stagetune.search.space import (
    distributions,
    hyperparams_from_params,
    optuna_params,
    same_choice,
    space_violations,
    suggest_hyperparams,
)

BASE = HyperParams()
FAMILIES = ("mlp", "cnn", "custom")
# A custom factory that says it reads every built-in architecture field (as mlp and cnn do theirs).
MODELS = {
    "mlp": ModelConfig(),
    "cnn": ModelConfig(family="cnn"),
    "custom": ModelConfig(
        family="custom", import_path="tests.broken_models:correct_mlp", uses=list(ARCHITECTURE_FIELDS)
    ),
}


def _hp(**values: Any) -> HyperParams:
    return HyperParams.model_validate({**BASE.model_dump(), **values})


# Every kind of parameter: conditional learning rates, a sampled momentum, fixed float/int/categorical
# parameters, numeric and boolean categoricals, log ints.
WIDE = SearchSpace(
    optimizer=CategoricalParam(choices=["adamw", "adam", "sgd"]),
    learning_rate={
        "adamw": FloatParam(low=1e-4, high=1e-2, scale="log"),
        "adam": FloatParam(low=2e-3, high=2e-3, scale="log"),
        "sgd": FloatParam(low=1e-2, high=0.3, scale="log"),
    },
    weight_decay=CategoricalParam(choices=[0.0, 1e-5, 1e-4]),
    momentum=FloatParam(low=0.5, high=0.99),
    dropout=FloatParam(low=0.25, high=0.25),
    batch_size=CategoricalParam(choices=[32, 64]),
    width=IntParam(low=16, high=512, scale="log"),
    depth=IntParam(low=2, high=2),
    channels=CategoricalParam(choices=[8, 16, 32, 64]),
    activation=CategoricalParam(choices=["relu", "gelu", "tanh"]),
    batch_norm=CategoricalParam(choices=[False, True]),
    rebalance=CategoricalParam(choices=["none", "class_weights"]),
)


def _asked(space: SearchSpace, family: str, n: int, seed: int = 0) -> list[tuple[optuna.Trial, HyperParams]]:
    """Real trials of a random-sampler study, with the hyperparameters sampled from each."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    result = []
    for _ in range(n):
        trial = study.ask()
        result.append((trial, suggest_hyperparams(trial, space, MODELS[family])))
    return result


def test_fixed_params_are_set_without_being_suggested() -> None:
    space = SearchSpace(
        optimizer=CategoricalParam(choices=["adam"]),
        dropout=FloatParam(low=0.2, high=0.2),
        depth=IntParam(low=3, high=3),
        rebalance=CategoricalParam(choices=["oversample"]),
    )
    [(trial, hp)] = _asked(space, "mlp", 1)
    sampled = {"learning_rate_adam", "weight_decay", "batch_size", "width", "activation", "batch_norm"}
    assert set(trial.params) == sampled
    assert (hp.optimizer, hp.dropout, hp.depth, hp.rebalance) == ("adam", 0.2, 3, "oversample")


def test_learning_rate_is_named_and_ranged_per_optimizer() -> None:
    seen = set()
    for trial, hp in _asked(WIDE, "custom", 60):
        names = {name for name in trial.params if name.startswith("learning_rate")}
        seen.add(hp.optimizer)
        if hp.optimizer == "adam":  # fixed range: not suggested, value taken directly
            assert names == set()
            assert hp.learning_rate == 2e-3
        else:
            assert names == {f"learning_rate_{hp.optimizer}"}
            rate = WIDE.learning_rate[hp.optimizer]
            assert rate.low <= hp.learning_rate <= rate.high
            dist = trial.distributions[f"learning_rate_{hp.optimizer}"]
            assert isinstance(dist, optuna.distributions.FloatDistribution)
            assert dist.log
    assert seen == {"adamw", "adam", "sgd"}


def test_momentum_is_sampled_only_for_sgd() -> None:
    for trial, hp in _asked(WIDE, "custom", 40):
        if hp.optimizer == "sgd":
            assert "momentum" in trial.params
            assert hp.momentum == trial.params["momentum"]
        else:
            assert "momentum" not in trial.params
            assert hp.momentum == BASE.momentum


@pytest.mark.parametrize(
    ("family", "absent", "present"),
    [("mlp", {"channels"}, {"width"}), ("cnn", {"width"}, {"channels"}), ("custom", set(), {"width", "channels"})],
)
def test_family_decides_width_and_channels(family: str, absent: set[str], present: set[str]) -> None:
    [(trial, hp)] = _asked(WIDE, family, 1)
    assert absent.isdisjoint(trial.params)
    assert present <= set(trial.params)
    for field in absent:
        assert getattr(hp, field) == getattr(BASE, field)


def test_unknown_family_is_an_error() -> None:
    with pytest.raises(InputError, match="unknown model family 'rnn'"):
        suggest_hyperparams(FixedTrial({}), WIDE, ModelConfig(family="rnn"))


@pytest.mark.parametrize("family", FAMILIES)
def test_optuna_params_reproduce_a_real_trials_params_and_distributions(family: str) -> None:
    for trial, hp in _asked(WIDE, family, 30, seed=1):
        assert optuna_params(hp, WIDE, MODELS[family]) == trial.params
        assert distributions(WIDE, MODELS[family], hp.optimizer) == trial.distributions


@st.composite
def _inside(draw: st.DrawFn, space: SearchSpace, family: str) -> HyperParams:
    """Hyperparameters the space can produce for `family` (unsampled fields from BASE)."""

    def pick(param: Any) -> Any:
        if isinstance(param, CategoricalParam):
            return draw(st.sampled_from(param.choices))
        if isinstance(param, IntParam):
            return draw(st.integers(param.low, param.high))
        return draw(st.floats(param.low, param.high))

    optimizer = pick(space.optimizer)
    values = {"optimizer": optimizer, "learning_rate": pick(space.learning_rate[optimizer])}
    for field in ("weight_decay", "dropout", "batch_size", "depth", "activation", "batch_norm", "rebalance"):
        values[field] = pick(getattr(space, field))
    if optimizer == "sgd":
        values["momentum"] = pick(space.momentum)
    if family != "cnn":
        values["width"] = pick(space.width)
    if family != "mlp":
        values["channels"] = pick(space.channels)
    return _hp(**values)


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_round_trip_through_fixed_trial(family: str, data: st.DataObject) -> None:
    hp = data.draw(_inside(WIDE, family))
    params = optuna_params(hp, WIDE, MODELS[family])
    assert suggest_hyperparams(FixedTrial(params), WIDE, MODELS[family]) == hp
    assert hyperparams_from_params(params, WIDE, MODELS[family]) == hp
    # Fixed parameters never appear, and exactly one learning rate does: the optimizer's.
    assert {"dropout", "depth", "learning_rate_adam"}.isdisjoint(params)
    assert [n for n in params if n.startswith("learning_rate")] == (
        [] if hp.optimizer == "adam" else [f"learning_rate_{hp.optimizer}"]
    )


def test_enqueued_point_is_asked_back_unchanged() -> None:
    hp = _hp(optimizer="sgd", learning_rate=0.05, momentum=0.8, weight_decay=1e-5, dropout=0.25, batch_norm=True)
    study = optuna.create_study()
    study.enqueue_trial(optuna_params(hp, WIDE, MODELS["mlp"]))
    assert suggest_hyperparams(study.ask(), WIDE, MODELS["mlp"]) == hp


def test_booleans_stay_apart_from_numbers() -> None:
    assert not same_choice(1, True)
    assert not same_choice(False, 0)
    assert same_choice(True, True)
    assert same_choice(0.0, 0)
    # Distinct choices for the space (built unvalidated: the config itself refuses non-boolean batch_norm choices).
    space = SearchSpace().model_copy(update={"batch_norm": CategoricalParam(choices=[1, True])})
    assert optuna_params(_hp(batch_norm=True, dropout=0.1), space, MODELS["mlp"])["batch_norm"] is True


def test_points_outside_the_space_are_refused() -> None:
    hp = _hp(optimizer="adamw", learning_rate=0.5, dropout=0.3)
    problems = space_violations(hp, WIDE, MODELS["mlp"])
    assert len(problems) == 2
    assert "learning_rate_adamw" in problems[0]
    assert "dropout" in problems[1]
    with pytest.raises(ValueError, match="outside the search space"):
        optuna_params(hp, WIDE, MODELS["mlp"])


def test_rebuilding_from_params_checks_the_names() -> None:
    hp = _hp(optimizer="adamw", learning_rate=1e-3, dropout=0.25, depth=2)
    params = optuna_params(hp, WIDE, MODELS["mlp"])
    with pytest.raises(ValueError, match=r"\['channels'\] are not sampled"):
        hyperparams_from_params({**params, "channels": 16}, WIDE, MODELS["mlp"])
    with pytest.raises(ValueError, match="'width' is not found"):
        hyperparams_from_params({k: v for k, v in params.items() if k != "width"}, WIDE, MODELS["mlp"])


def test_a_value_hyperparams_rejects_is_an_error() -> None:
    # The space refuses choices the typed hyperparameters (and so the models) do not take, at validation...
    with pytest.raises(ValidationError, match=r"activation choices \['swish'\] are not activations"):
        SearchSpace(activation=CategoricalParam(choices=["swish"]))
    with pytest.raises(ValidationError, match="batch_norm choices must be true/false"):
        SearchSpace(batch_norm=CategoricalParam(choices=["yes"]))
    # ... and a space built around that check still fails at the typed hyperparameters, not in a model.
    space = SearchSpace().model_copy(update={"activation": CategoricalParam(choices=["swish"])})
    with pytest.raises(ValidationError, match="activation"):
        suggest_hyperparams(optuna.create_study().ask(), space, MODELS["mlp"])
