"""The search space as data: each hyperparameter's kind, range or choices, and scale.

Defaults follow ../shared/TUNING-RULES.md: learning rate and weight decay on a log scale with
per-optimizer learning-rate ranges (widened for the coarse stage), dropout linear in [0, 0.5],
batch sizes that are multiples of 32, widths 32..512, zero to three hidden layers.

The space reaches the simple answer (issue 17): depth 0 is a linear model ("a linear model is the
first baseline any practitioner checks", TUNING-RULES.md, what the sources leave implicit), and
weight decay goes up to 1e-1. TUNING-RULES.md's per-optimizer table covers learning rates only; its
weight-decay rule is "log scale; [0, 1e-4] typical, 5e-4 a common default" (000, 001), which is L2
for SGD and Adam. AdamW's decay is decoupled from the gradient and is used at 1e-2 (PyTorch's
default) to 1e-1 (general practice, not from the five texts); the shared range 1e-6..1e-1 holds both,
and with lr <= 3e-1 an SGD/Adam step shrinks weights by at most 3% (strong regularisation, not
divergence). The refinement narrows it around what worked.
"""

from typing import Annotated, Literal, Self, get_args

from pydantic import Field, field_validator, model_validator

from schemas.base import StrictModel
from schemas.hyperparams import PARAM_NAME, ActivationName, HyperParams, OptimizerName

Scale = Literal["linear", "log"]
Choice = bool | int | float | str


class FloatParam(StrictModel):
    """A real-valued parameter sampled in [low, high] on a linear or log scale."""

    kind: Literal["float"] = "float"
    low: float
    high: float
    scale: Scale = "linear"

    @model_validator(mode="after")
    def _check_bounds(self) -> Self:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is greater than high ({self.high}): swap them")
        if self.scale == "log" and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got low={self.low}: use e.g. 1e-6 or scale: linear")
        return self


class IntParam(StrictModel):
    """An integer parameter sampled in [low, high] on a linear or log scale."""

    kind: Literal["int"] = "int"
    low: int
    high: int
    scale: Scale = "linear"

    @model_validator(mode="after")
    def _check_bounds(self) -> Self:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is greater than high ({self.high}): swap them")
        if self.scale == "log" and self.low < 1:
            raise ValueError(f"a log-scale integer range needs low >= 1, got low={self.low}")
        return self


class CategoricalParam(StrictModel):
    """A parameter chosen among a fixed list of values."""

    kind: Literal["categorical"] = "categorical"
    choices: list[Choice] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_unique(self) -> Self:
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ValueError(f"choices contain duplicates: {self.choices}")
        return self


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="kind")]
RealParam = Annotated[FloatParam | CategoricalParam, Field(discriminator="kind")]
WholeParam = Annotated[IntParam | CategoricalParam, Field(discriminator="kind")]


def _lr(low: float, high: float) -> FloatParam:
    return FloatParam(low=low, high=high, scale="log")


def _default_learning_rates() -> dict[OptimizerName, FloatParam]:
    # Practitioner ranges (SGD 1e-2..1e-1, Adam family 1e-3..1e-2), widened ~3x each way for the
    # coarse stage; the refinement stage narrows them around what worked.
    return {"sgd": _lr(3e-3, 3e-1), "adam": _lr(3e-4, 3e-2), "adamw": _lr(3e-4, 3e-2)}


class SearchSpace(StrictModel):
    """Every tunable hyperparameter; a fixed value is a one-element categorical or low == high.

    Numeric parameters take a range (float/int) or an explicit list of values (categorical).
    """

    optimizer: CategoricalParam = CategoricalParam(choices=["adamw", "adam", "sgd"])
    learning_rate: dict[OptimizerName, FloatParam] = Field(default_factory=_default_learning_rates)
    weight_decay: RealParam = FloatParam(low=1e-6, high=1e-1, scale="log")
    momentum: RealParam = FloatParam(low=0.9, high=0.9)
    dropout: RealParam = FloatParam(low=0.0, high=0.5)
    batch_size: WholeParam = CategoricalParam(choices=[32, 64, 128, 256])
    width: WholeParam = IntParam(low=32, high=512, scale="log")
    depth: WholeParam = IntParam(low=0, high=3)
    channels: WholeParam = CategoricalParam(choices=[16, 32, 64])
    activation: CategoricalParam = CategoricalParam(choices=["relu", "gelu"])
    batch_norm: CategoricalParam = CategoricalParam(choices=[False, True])
    rebalance: CategoricalParam = Field(
        default=CategoricalParam(choices=["auto"]),
        description="Class rebalancing strategies; auto (alone): class_weights when Stage 1 finds the classes "
        "skewed (search.imbalance_ratio), else none.",
    )
    loss: CategoricalParam = Field(
        default=CategoricalParam(choices=["auto"]),
        description="Training loss choices (regression: mse, huber, l1; tuned, judge by val_rmse/val_mae/val_r2); "
        "auto: training.loss.",
    )
    augment: CategoricalParam = Field(
        default=CategoricalParam(choices=[False]),
        description="Whether trials augment their training batches (the augment: section): [false, true] tunes it.",
    )
    params: dict[str, Param] = Field(
        default_factory=dict,
        description="Search ranges of the model's own hyperparameters (custom family), by name; each needs a "
        "baseline value in model.params. The factory reads the sampled values as hp.params['name'].",
    )

    @field_validator("params")
    @classmethod
    def _check_param_names(cls, params: dict[str, Param]) -> dict[str, Param]:
        bad = [name for name in params if not PARAM_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"names {bad} are not identifiers: use letters, digits and underscores (e.g. num_blocks)")
        builtin = sorted(set(params) & set(HyperParams.model_fields))
        if builtin:
            raise ValueError(
                f"{builtin} are built-in hyperparameters (space.{builtin[0]}): give the model's own ones "
                "other names (e.g. hidden_size)"
            )
        return params

    @model_validator(mode="after")
    def _check_choices(self) -> Self:
        optimizers = {"adam", "adamw", "sgd"}
        unknown = [c for c in self.optimizer.choices if c not in optimizers]
        if unknown:
            raise ValueError(f"optimizer choices {unknown} are not supported: use {sorted(optimizers)}")
        missing = [c for c in self.optimizer.choices if c not in self.learning_rate]
        if missing:
            raise ValueError(f"learning_rate has no range for optimizer(s) {missing}: add learning_rate.<name>")
        losses = {"auto", "cross_entropy", "mse", "huber", "l1"}
        if any(c not in losses for c in self.loss.choices):
            raise ValueError(f"loss choices {self.loss.choices} must be among {sorted(losses)}")
        strategies = {"none", "oversample", "balanced_batches", "class_weights"}
        bad = [c for c in self.rebalance.choices if c not in strategies and self.rebalance.choices != ["auto"]]
        if bad:
            raise ValueError(f"rebalance choices {bad} are not strategies: use [auto] or {sorted(strategies)}")
        # Every model family builds exactly the activations HyperParams names; a trial sampling another
        # would fail at its first step, after the search stage's MLflow run was created.
        activations = set(get_args(ActivationName))
        bad = [c for c in self.activation.choices if c not in activations]
        if bad:
            raise ValueError(
                f"activation choices {bad} are not activations the models build: use {sorted(activations)}"
            )
        for name in ("batch_norm", "augment"):
            choices = getattr(self, name).choices
            if any(not isinstance(c, bool) for c in choices):
                raise ValueError(f"{name} choices must be true/false, got {choices}")
        for name, least in (("batch_size", 1), ("width", 1), ("depth", 0), ("channels", 1)):
            param = getattr(self, name)
            values = param.choices if isinstance(param, CategoricalParam) else [param.low, param.high]
            if any(isinstance(v, bool) or not isinstance(v, int) or v < least for v in values):
                what = "non-negative (0: a linear model)" if least == 0 else "positive"
                raise ValueError(f"{name} values must be {what} integers, got {values}")
        self._check_channels()
        for name, upper in (("weight_decay", 1.0), ("momentum", 0.999), ("dropout", 0.95)):
            param = getattr(self, name)
            values = param.choices if isinstance(param, CategoricalParam) else [param.low, param.high]
            if any(isinstance(v, bool | str) or not 0 <= v <= upper for v in values):
                raise ValueError(f"{name} values must be numbers in [0, {upper}], got {values}")
        return self

    def _check_channels(self) -> None:
        # The CNN doubles its channels per block from this value: powers of two keep every block's count one.
        channels = self.channels
        values = channels.choices if isinstance(channels, CategoricalParam) else [channels.low, channels.high]
        if isinstance(channels, IntParam) and channels.low != channels.high:
            raise ValueError(
                f"channels [{channels.low}, {channels.high}] is a range, but channel counts are powers of two: "
                "list them, e.g. {kind: categorical, choices: [16, 32, 64]}"
            )
        odd = [v for v in values if not is_power_of_two(v)]
        if odd:
            raise ValueError(f"channels values {odd} are not powers of two: use e.g. 16, 32, 64")


def is_power_of_two(value: object) -> bool:
    """True for 1, 2, 4, 8, ... (not for bools)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0 and value & (value - 1) == 0
