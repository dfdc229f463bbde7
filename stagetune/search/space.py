"""The search space as Optuna params, sampled into typed `HyperParams` (and back).

Naming: every Optuna param is named after its `HyperParams` field, except the learning rate, which
depends on the optimizer: `learning_rate_<optimizer>` with that optimizer's range, so TPE/GP see one
consistent distribution per name, and the model's own hyperparameters (`space.params.<name>`), which
are `params.<name>` (the key they also have as MLflow params). A fixed parameter (low == high, or a
single choice) is never suggested: its value is set directly and stays out of Optuna's space. Fields
a trial does not sample (momentum without SGD, fields the model family does not read: see
`stagetune.models`) come from the model's baseline hyperparameters.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import BaseTrial, FixedTrial

from schemas.config import ModelConfig
from schemas.hyperparams import HyperParams, ParamValues
from schemas.search_space import CategoricalParam, Choice, FloatParam, IntParam, SearchSpace
from stagetune.models import tuned_fields

AnyParam = FloatParam | IntParam | CategoricalParam

# The model's own hyperparameters: `params.<name>` as Optuna params, MLflow params and narrowing names.
USER_PREFIX = "params."
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
    "augment",
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


def unused_fields(model: ModelConfig) -> frozenset[str]:
    """The built-in space fields `model`'s family does not read (never sampled, narrowed or logged for it)."""
    return frozenset(SPACE_FIELDS) - tuned_fields(model)


def user_param_name(name: str) -> str:
    """The Optuna (and MLflow) name of the model's own hyperparameter `name`: `params.<name>`."""
    return USER_PREFIX + name


def slot_value(hp: HyperParams, field: str) -> Any:
    """The value of a slot's field in `hp` (`params.<name>` reads hp.params; None if it has no such param)."""
    if field.startswith(USER_PREFIX):
        return hp.params.get(field.removeprefix(USER_PREFIX))
    return getattr(hp, field)


def is_fixed(param: AnyParam) -> bool:
    """True if the parameter has a single possible value (low == high, or one choice)."""
    if isinstance(param, CategoricalParam):
        return len(param.choices) == 1
    return param.low == param.high


def same_choice(choice: Any, value: Any) -> bool:
    """Equality that keeps bools apart from the numbers 0 and 1 (`True == 1` in Python)."""
    return bool(choice == value) and isinstance(choice, bool) == isinstance(value, bool)


def slots(space: SearchSpace, model: ModelConfig, optimizer: str) -> list[Slot]:
    """The parameters a trial using `optimizer` samples for `model`, fixed ones included, in suggestion order.

    The model's own hyperparameters come last, in name order.
    """
    unused = unused_fields(model)
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
    for name in sorted(space.params):
        result.append(Slot(user_param_name(name), user_param_name(name), space.params[name]))
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


def suggest_hyperparams(trial: BaseTrial, space: SearchSpace, model: ModelConfig) -> HyperParams:
    """Sample every parameter of `space` that `model`'s family reads; the rest come from its baseline.

    The optimizer is drawn first; its learning rate is `learning_rate_<optimizer>`, and momentum is
    drawn only for SGD. Fixed parameters are set without being suggested. The model's own
    hyperparameters (`space.params`) land in `hp.params`.
    """
    unused_fields(model)  # an unknown family is an error before anything is suggested
    optimizer = _suggest(trial, Slot("optimizer", "optimizer", space.optimizer))
    values = {slot.field: _suggest(trial, slot) for slot in slots(space, model, str(optimizer))}
    base = model.baseline_hyperparams
    own = {field.removeprefix(USER_PREFIX): v for field, v in values.items() if field.startswith(USER_PREFIX)}
    builtin = {field: v for field, v in values.items() if not field.startswith(USER_PREFIX)}
    params = ParamValues({**base.params, **own})
    # model_validate (not model_copy) so that a value the space allows but HyperParams rejects is an error.
    return HyperParams.model_validate({**base.model_dump(), **builtin, "params": params})


def _contains(param: AnyParam, value: Any) -> bool:
    if isinstance(param, CategoricalParam):
        return any(same_choice(choice, value) for choice in param.choices)
    return param.low <= value <= param.high


def space_violations(hp: HyperParams, space: SearchSpace, model: ModelConfig) -> list[str]:
    """The fields of `hp` that `space` cannot produce for `model`, one sentence each (empty: inside)."""
    if hp.optimizer not in space.learning_rate:
        return [f"optimizer={hp.optimizer!r} has no learning_rate range"]
    problems = []
    for slot in slots(space, model, hp.optimizer):
        value = slot_value(hp, slot.field)
        if value is None or not _contains(_resolved(slot.field, slot.param), value):
            allowed = (
                slot.param.choices if isinstance(slot.param, CategoricalParam) else [slot.param.low, slot.param.high]
            )
            problems.append(f"{slot.field}={value!r} is outside {slot.name} {allowed}")
    return problems


def _param_value(param: AnyParam, value: Any) -> Choice:
    if isinstance(param, CategoricalParam):
        return next(choice for choice in param.choices if same_choice(choice, value))
    return float(value) if isinstance(param, FloatParam) else int(value)


def optuna_params(hp: HyperParams, space: SearchSpace, model: ModelConfig) -> dict[str, Any]:
    """The Optuna params `suggest_hyperparams` would produce for `hp` (e.g. for `study.enqueue_trial`).

    Raises ValueError if `hp` lies outside `space` (see `space_violations`): no params reproduce it.
    """
    problems = space_violations(hp, space, model)
    if problems:
        raise ValueError(f"hyperparameters outside the search space: {'; '.join(problems)}")
    return {
        slot.name: _param_value(slot.param, slot_value(hp, slot.field))
        for slot in slots(space, model, hp.optimizer)
        if not is_fixed(slot.param)
    }


def hyperparams_from_params(params: Mapping[str, Any], space: SearchSpace, model: ModelConfig) -> HyperParams:
    """Rebuild a trial's hyperparameters from its Optuna params alone (values as Optuna holds them).

    Raises ValueError if a param the space needs is missing, or if `params` holds names it never samples.
    """
    trial = FixedTrial(dict(params))
    hp = suggest_hyperparams(trial, space, model)
    extra = sorted(set(params) - set(trial.params))
    if extra:
        raise ValueError(f"params {extra} are not sampled by this search space for family {model.family!r}")
    return hp


def _distribution(param: AnyParam) -> BaseDistribution:
    if isinstance(param, CategoricalParam):
        return CategoricalDistribution(param.choices)
    if isinstance(param, FloatParam):
        return FloatDistribution(param.low, param.high, log=param.scale == "log")
    return IntDistribution(param.low, param.high, log=param.scale == "log")


def distributions(space: SearchSpace, model: ModelConfig, optimizer: str) -> dict[str, BaseDistribution]:
    """Optuna distributions of the params a trial using `optimizer` samples (for `optuna.trial.create_trial`)."""
    return {slot.name: _distribution(slot.param) for slot in slots(space, model, optimizer) if not is_fixed(slot.param)}


def logged_hyperparams(hp: HyperParams, model: ModelConfig) -> dict[str, Any]:
    """`hp` as flat MLflow params: the built-in fields `model`'s family reads, and `params.<name>` for its own."""
    read = tuned_fields(model)
    values: dict[str, Any] = {k: v for k, v in hp.model_dump(mode="json").items() if k in read}
    return values | {user_param_name(name): value for name, value in sorted(hp.params.items())}
