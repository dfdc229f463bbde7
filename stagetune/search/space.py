"""The search space as Optuna params, sampled into typed `HyperParams` (and back).

Naming: every Optuna param is named after its `HyperParams` field, except the learning rate, which
depends on the optimizer: `learning_rate_<optimizer>` with that optimizer's range, so TPE/GP see one
consistent distribution per name. A fixed parameter (low == high, or a single choice) is never
suggested: its value is set directly and stays out of Optuna's space. Fields a trial does not
sample (momentum without SGD, the other family's width/channels) come from the base hyperparameters.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import BaseTrial, FixedTrial

from schemas.hyperparams import HyperParams
from schemas.search_space import CategoricalParam, Choice, FloatParam, IntParam, SearchSpace

AnyParam = FloatParam | IntParam | CategoricalParam

FAMILIES = ("mlp", "cnn", "custom")
# Fields a family's model ignores: not suggested, so they cost no samples and do not mislead TPE/GP.
_UNUSED_BY_FAMILY: dict[str, frozenset[str]] = {
    "mlp": frozenset({"channels"}),
    "cnn": frozenset({"width"}),
    "custom": frozenset(),
}
# Sampled after the optimizer and its learning rate, in this order.
SPACE_FIELDS = (
    "weight_decay",
    "momentum",
    "dropout",
    "batch_size",
    "width",
    "depth",
    "channels",
    "activation",
    "batch_norm",
    "rebalance",
    "loss",
)


@dataclass(frozen=True)
class Slot:
    """One parameter of a trial: the `HyperParams` field it fills, its Optuna name and its range."""

    field: str
    name: str
    param: AnyParam


def learning_rate_name(optimizer: str) -> str:
    """The Optuna param name of the learning rate under `optimizer`, e.g. `learning_rate_adamw`."""
    return f"learning_rate_{optimizer}"


def unused_fields(family: str) -> frozenset[str]:
    """The space fields a model family ignores (never sampled for it)."""
    if family not in _UNUSED_BY_FAMILY:
        raise ValueError(f"unknown model family {family!r}: use one of {', '.join(FAMILIES)}")
    return _UNUSED_BY_FAMILY[family]


def is_fixed(param: AnyParam) -> bool:
    """True if the parameter has a single possible value (low == high, or one choice)."""
    if isinstance(param, CategoricalParam):
        return len(param.choices) == 1
    return param.low == param.high


def same_choice(choice: Any, value: Any) -> bool:
    """Equality that keeps bools apart from the numbers 0 and 1 (`True == 1` in Python)."""
    return bool(choice == value) and isinstance(choice, bool) == isinstance(value, bool)


def slots(space: SearchSpace, family: str, optimizer: str) -> list[Slot]:
    """The parameters a trial using `optimizer` samples for `family`, fixed ones included, in suggestion order."""
    unused = unused_fields(family)
    rates: dict[str, FloatParam] = {str(name): rate for name, rate in space.learning_rate.items()}
    if optimizer not in rates:
        raise ValueError(f"optimizer {optimizer!r} has no learning_rate range in the search space")
    result = [
        Slot("optimizer", "optimizer", space.optimizer),
        Slot("learning_rate", learning_rate_name(optimizer), rates[optimizer]),
    ]
    for field in SPACE_FIELDS:
        if field in unused or (field == "momentum" and optimizer != "sgd"):
            continue
        result.append(Slot(field, field, getattr(space, field)))
    return result


# space.rebalance auto is resolved at Stage 1 (stagetune.data.defaults); a space used before or outside
# the pipeline reads it as the strategy auto becomes on balanced classes.
UNRESOLVED_AUTO = CategoricalParam(choices=["none"])


def _resolved(field: str, param: AnyParam) -> AnyParam:
    auto = field == "rebalance" and isinstance(param, CategoricalParam) and param.choices == ["auto"]
    return UNRESOLVED_AUTO if auto else param


def _suggest(trial: BaseTrial, slot: Slot) -> Any:
    param = _resolved(slot.field, slot.param)
    if isinstance(param, CategoricalParam):
        return param.choices[0] if is_fixed(param) else trial.suggest_categorical(slot.name, param.choices)
    if is_fixed(param):
        return param.low
    if isinstance(param, FloatParam):
        return trial.suggest_float(slot.name, param.low, param.high, log=param.scale == "log")
    return trial.suggest_int(slot.name, param.low, param.high, log=param.scale == "log")


def suggest_hyperparams(
    trial: BaseTrial, space: SearchSpace, base: HyperParams, *, family: str = "custom"
) -> HyperParams:
    """Sample every parameter of `space` that a `family` model uses; the rest come from `base`.

    The optimizer is drawn first; its learning rate is `learning_rate_<optimizer>`, and momentum is
    drawn only for SGD. Fixed parameters are set without being suggested.
    """
    unused_fields(family)  # an unknown family is an error before anything is suggested
    optimizer = _suggest(trial, Slot("optimizer", "optimizer", space.optimizer))
    values = {slot.field: _suggest(trial, slot) for slot in slots(space, family, str(optimizer))}
    # model_validate (not model_copy) so that a value the space allows but HyperParams rejects is an error.
    return HyperParams.model_validate({**base.model_dump(), **values})


def _contains(param: AnyParam, value: Any) -> bool:
    if isinstance(param, CategoricalParam):
        return any(same_choice(choice, value) for choice in param.choices)
    return param.low <= value <= param.high


def space_violations(hp: HyperParams, space: SearchSpace, family: str) -> list[str]:
    """The fields of `hp` that `space` cannot produce for `family`, one sentence each (empty: inside)."""
    if hp.optimizer not in space.learning_rate:
        return [f"optimizer={hp.optimizer!r} has no learning_rate range"]
    problems = []
    for slot in slots(space, family, hp.optimizer):
        value = getattr(hp, slot.field)
        if not _contains(_resolved(slot.field, slot.param), value):
            allowed = (
                slot.param.choices if isinstance(slot.param, CategoricalParam) else [slot.param.low, slot.param.high]
            )
            problems.append(f"{slot.field}={value!r} is outside {slot.name} {allowed}")
    return problems


def _param_value(param: AnyParam, value: Any) -> Choice:
    if isinstance(param, CategoricalParam):
        return next(choice for choice in param.choices if same_choice(choice, value))
    return float(value) if isinstance(param, FloatParam) else int(value)


def optuna_params(hp: HyperParams, space: SearchSpace, family: str) -> dict[str, Any]:
    """The Optuna params `suggest_hyperparams` would produce for `hp` (e.g. for `study.enqueue_trial`).

    Raises ValueError if `hp` lies outside `space` (see `space_violations`): no params reproduce it.
    """
    problems = space_violations(hp, space, family)
    if problems:
        raise ValueError(f"hyperparameters outside the search space: {'; '.join(problems)}")
    return {
        slot.name: _param_value(slot.param, getattr(hp, slot.field))
        for slot in slots(space, family, hp.optimizer)
        if not is_fixed(slot.param)
    }


def hyperparams_from_params(
    params: Mapping[str, Any], space: SearchSpace, base: HyperParams, family: str
) -> HyperParams:
    """Rebuild a trial's hyperparameters from its Optuna params alone (values as Optuna holds them).

    Raises ValueError if a param the space needs is missing, or if `params` holds names it never samples.
    """
    trial = FixedTrial(dict(params))
    hp = suggest_hyperparams(trial, space, base, family=family)
    extra = sorted(set(params) - set(trial.params))
    if extra:
        raise ValueError(f"params {extra} are not sampled by this search space for family {family!r}")
    return hp


def _distribution(param: AnyParam) -> BaseDistribution:
    if isinstance(param, CategoricalParam):
        return CategoricalDistribution(param.choices)
    if isinstance(param, FloatParam):
        return FloatDistribution(param.low, param.high, log=param.scale == "log")
    return IntDistribution(param.low, param.high, log=param.scale == "log")


def distributions(space: SearchSpace, family: str, optimizer: str) -> dict[str, BaseDistribution]:
    """Optuna distributions of the params a trial using `optimizer` samples (for `optuna.trial.create_trial`)."""
    return {
        slot.name: _distribution(slot.param) for slot in slots(space, family, optimizer) if not is_fixed(slot.param)
    }
