"""The config's search space written out in each peer's own vocabulary: Optuna `trial.suggest_*` and Ray
Tune sample domains. Same ranges and scales as stagetune's search, none of stagetune's search code.

Only the MLP family's fields are sampled (`channels` belongs to the CNN); the learning rate's range
depends on the optimizer; a parameter with a single value is set, not sampled.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
import optuna

from schemas.hyperparams import HyperParams
from schemas.search_space import CategoricalParam, FloatParam, IntParam, SearchSpace

AnyParam = FloatParam | IntParam | CategoricalParam
MLP_FIELDS = ("weight_decay", "momentum", "dropout", "batch_size", "width", "depth", "activation", "batch_norm")
# `rebalance` is sampled last; `momentum` only matters (and is only sampled) with SGD.


def _fields(space: SearchSpace) -> dict[str, AnyParam]:
    params: dict[str, AnyParam] = {name: getattr(space, name) for name in MLP_FIELDS}
    # `auto` is resolved from the data at Stage 1; a space that did not pass through it (bench/ray_overhead.py)
    # gets what auto becomes on balanced classes, as stagetune's own search does.
    auto = space.rebalance.choices == ["auto"]
    params["rebalance"] = CategoricalParam(choices=["none"]) if auto else space.rebalance
    return params


def _fixed_value(param: AnyParam) -> object | None:
    if isinstance(param, CategoricalParam):
        return param.choices[0] if len(param.choices) == 1 else None
    return param.low if param.low == param.high else None


def suggest_optuna(trial: optuna.Trial, space: SearchSpace) -> HyperParams:
    """Sample a point of `space` with Optuna's define-by-run API."""
    values: dict[str, Any] = {"optimizer": trial.suggest_categorical("optimizer", space.optimizer.choices)}
    rate = space.learning_rate[values["optimizer"]]
    values["learning_rate"] = trial.suggest_float(
        f"learning_rate_{values['optimizer']}", rate.low, rate.high, log=rate.scale == "log"
    )
    for name, param in _fields(space).items():
        if name == "momentum" and values["optimizer"] != "sgd":
            continue
        fixed = _fixed_value(param)
        if fixed is not None:
            values[name] = fixed
        elif isinstance(param, CategoricalParam):
            values[name] = trial.suggest_categorical(name, param.choices)
        elif isinstance(param, IntParam):
            values[name] = trial.suggest_int(name, param.low, param.high, log=param.scale == "log")
        else:
            values[name] = trial.suggest_float(name, param.low, param.high, log=param.scale == "log")
    return HyperParams(**values)


def ray_param_space(space: SearchSpace, seed: int) -> dict[str, Any]:
    """`space` as Ray Tune domains; the optimizer-dependent learning rate is a `tune.sample_from`."""
    from ray import tune

    rng = np.random.default_rng(seed)
    rates = {name: (rate.low, rate.high, rate.scale) for name, rate in space.learning_rate.items()}

    def learning_rate(spec: Any) -> float:
        low, high, scale = rates[spec.config.optimizer]
        if scale == "log":
            return float(np.exp(rng.uniform(np.log(low), np.log(high))))
        return float(rng.uniform(low, high))

    domains: dict[str, Any] = {
        "optimizer": tune.choice(list(space.optimizer.choices)),
        "learning_rate": tune.sample_from(learning_rate),
    }
    for name, param in _fields(space).items():
        fixed = _fixed_value(param)
        if fixed is not None:
            domains[name] = fixed
        elif isinstance(param, CategoricalParam):
            domains[name] = tune.choice(list(param.choices))
        elif isinstance(param, IntParam):
            sample = tune.lograndint if param.scale == "log" else tune.randint
            domains[name] = sample(param.low, param.high + 1)  # Ray's upper bound is exclusive
        else:
            domains[name] = (tune.loguniform if param.scale == "log" else tune.uniform)(param.low, param.high)
    return domains


def hyperparams_from(config: Mapping[str, Any]) -> HyperParams:
    """A sampled Ray config as typed hyperparameters (momentum dropped unless the optimizer is SGD)."""
    values = {name: _plain(config[name]) for name in ("optimizer", "learning_rate", *_ray_fields(config))}
    if values["optimizer"] != "sgd":
        values.pop("momentum", None)
    return HyperParams(**values)


def _ray_fields(config: Mapping[str, Any]) -> list[str]:
    return [name for name in (*MLP_FIELDS, "rebalance") if name in config]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
