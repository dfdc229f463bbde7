"""One trial's hyperparameters: everything needed to rebuild its model, optimizer and data feed."""

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, NoReturn

from pydantic import AfterValidator, Field

from schemas.base import StrictModel

OptimizerName = Literal["adam", "adamw", "sgd"]
ActivationName = Literal["relu", "leaky_relu", "gelu", "tanh"]
RebalanceStrategy = Literal["none", "oversample", "balanced_batches", "class_weights"]
LossName = Literal["auto", "cross_entropy", "mse", "huber", "l1"]
ParamValue = bool | int | float | str
# The built-in fields that shape a model (as opposed to the optimizer and the data feed, which every
# family uses): a model family says which of these it reads, and only those are searched for it.
ARCHITECTURE_FIELDS = ("dropout", "width", "depth", "channels", "activation", "batch_norm")
PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class ParamValues(dict[str, ParamValue]):
    """A read-only dict of a model's own hyperparameters (`hp.params["blocks"]`); it pickles and copies."""

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("hp.params is read-only: a trial's hyperparameters are fixed once sampled")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _read_only

    def __reduce__(self) -> tuple[type["ParamValues"], tuple[dict[str, ParamValue]]]:
        return ParamValues, (dict(self),)


def _check_params(values: Mapping[str, ParamValue]) -> ParamValues:
    bad = [name for name in values if not PARAM_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"names {bad} are not identifiers: use letters, digits and underscores (e.g. num_blocks)")
    return ParamValues(values)


ParamMapping = Annotated[Mapping[str, ParamValue], AfterValidator(_check_params)]


class HyperParams(StrictModel):
    """A point of the search space, typed. Model and optimizer are built from this alone."""

    optimizer: OptimizerName = "adamw"
    learning_rate: float = Field(default=3e-3, gt=0, le=10)
    weight_decay: float = Field(default=1e-4, ge=0, le=1)
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum (ignored by Adam/AdamW).")
    dropout: float = Field(default=0.0, ge=0, lt=1)
    batch_size: int = Field(default=64, ge=1, le=65536)
    width: int = Field(default=128, ge=1, le=16384, description="Hidden units (MLP) per layer.")
    depth: int = Field(
        default=2, ge=0, le=32, description="Hidden layers (MLP) or conv blocks (CNN); 0: a linear model."
    )
    channels: int = Field(default=32, ge=1, le=4096, description="Filters of the first conv block (CNN).")
    activation: ActivationName = "relu"
    batch_norm: bool = False
    rebalance: RebalanceStrategy = "none"
    loss: LossName = Field(
        default="auto", description="Training loss; auto: training.loss (cross-entropy, or MSE for regression)."
    )
    augment: bool = Field(
        default=False,
        description="Augment training batches as the augment: section says (never validation or test batches).",
    )
    params: ParamMapping = Field(
        default_factory=ParamValues,
        description="The model's own hyperparameters (custom family), read-only: the factory reads "
        "hp.params['name']. Set baselines in model.params and ranges in space.params.",
    )
