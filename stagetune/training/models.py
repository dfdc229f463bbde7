"""Model families built from HyperParams alone: an MLP, a small CNN, or a user factory.

Hidden layers get He (Kaiming) initialisation for ReLU-like activations and Xavier/Glorot for tanh
(TUNING-RULES.md, sources 002/004), biases start at zero. The output layer is a plain Linear that
produces logits; its weights start small (std HEAD_INIT_GAIN / sqrt(fan_in)) so the logits are near
zero and the initial cross-entropy is close to ln(num_classes), which the sanity gate checks.
"""

import importlib
import math
from collections.abc import Sequence

import torch
from torch import nn

from schemas.hyperparams import ActivationName, HyperParams
from stagetune.errors import InputError

# Logits start with a standard deviation of about HEAD_INIT_GAIN x the RMS of the last hidden layer
# (~1 after He init on standardised inputs): the initial loss then exceeds ln(C) by ~HEAD_INIT_GAIN^2 / 2.
HEAD_INIT_GAIN = 0.1
LEAKY_RELU_SLOPE = 0.01
# CNN channels double per block up to this many (or hp.channels if larger), so deep stacks stay sane.
MAX_CNN_CHANNELS = 512


def build_model(
    family: str,
    hp: HyperParams,
    input_shape: Sequence[int],
    num_classes: int,
    import_path: str | None = None,
    *,
    seed: int | None = None,
) -> nn.Module:
    """Build the model of `family` ("mlp", "cnn" or "custom") for inputs of `input_shape`.

    With `seed`, the weights are drawn from a forked CPU random state seeded with it, so the same
    seed gives the same model without touching the caller's global random state.
    """
    if seed is None:
        return _build(family, hp, input_shape, num_classes, import_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(family, hp, input_shape, num_classes, import_path)


def _build(
    family: str, hp: HyperParams, input_shape: Sequence[int], num_classes: int, import_path: str | None
) -> nn.Module:
    if family == "mlp":
        return MLP(hp, math.prod(input_shape), num_classes)
    if family == "cnn":
        if len(input_shape) != 3:
            raise InputError("model.family", f"'cnn' needs image-shaped input [C, H, W], got {list(input_shape)}")
        channels, height, width = (int(v) for v in input_shape)
        return CNN(hp, (channels, height, width), num_classes)
    if family == "custom":
        return _build_custom(import_path, hp, input_shape, num_classes)
    raise InputError("model.family", f"unknown model family {family!r}: use mlp, cnn or custom")


def make_activation(name: ActivationName) -> nn.Module:
    """The activation module called `name`."""
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(LEAKY_RELU_SLOPE)
    if name == "gelu":
        return nn.GELU()
    if name == "tanh":
        return nn.Tanh()
    raise ValueError(f"unknown activation {name!r}")


def init_hidden(layer: nn.Linear | nn.Conv2d, activation: ActivationName) -> None:
    """He init for ReLU-like activations (GELU treated as ReLU), Xavier with tanh gain for tanh; zero bias."""
    if activation == "tanh":
        nn.init.xavier_uniform_(layer.weight, gain=nn.init.calculate_gain("tanh"))
    elif activation == "leaky_relu":
        nn.init.kaiming_normal_(layer.weight, a=LEAKY_RELU_SLOPE, nonlinearity="leaky_relu")
    else:
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def make_head(in_features: int, num_classes: int) -> nn.Linear:
    """The output Linear layer, initialised small so the initial logits are close to zero."""
    head = nn.Linear(in_features, num_classes)
    nn.init.normal_(head.weight, std=HEAD_INIT_GAIN / math.sqrt(in_features))
    nn.init.zeros_(head.bias)
    return head


class MLP(nn.Module):
    """hp.depth x [Linear(hp.width) -> BatchNorm1d? -> activation -> Dropout?] then a Linear head.

    Depth 0 is a linear model (multinomial logistic regression): the first baseline a practitioner checks.
    """

    def __init__(self, hp: HyperParams, in_features: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = in_features
        for _ in range(hp.depth):
            linear = nn.Linear(fan_in, hp.width, bias=not hp.batch_norm)
            init_hidden(linear, hp.activation)
            layers.append(linear)
            if hp.batch_norm:
                layers.append(nn.BatchNorm1d(hp.width))
            layers.append(make_activation(hp.activation))
            if hp.dropout > 0:
                layers.append(nn.Dropout(hp.dropout))
            fan_in = hp.width
        self.body = nn.Sequential(*layers)
        self.head = make_head(fan_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, num_classes)."""
        return self.head(self.body(x))


class CNN(nn.Module):
    """hp.depth blocks of [3x3 conv -> BatchNorm2d? -> activation -> 2x2 max-pool while H, W >= 2].

    Block i has hp.channels * 2**i filters (capped at MAX_CNN_CHANNELS); then global average
    pooling, dropout and a Linear head. Flat inputs of C*H*W features are reshaped to (C, H, W).
    """

    def __init__(self, hp: HyperParams, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.input_shape = input_shape
        in_channels, height, width = input_shape
        cap = max(hp.channels, MAX_CNN_CHANNELS)
        layers: list[nn.Module] = []
        for block in range(hp.depth):
            out_channels = min(hp.channels * 2**block, cap)
            conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=not hp.batch_norm)
            init_hidden(conv, hp.activation)
            layers.append(conv)
            if hp.batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(make_activation(hp.activation))
            if height >= 2 and width >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            in_channels = out_channels
        # Depth 0: a linear model on the pixels (averaging them away would leave one number per channel).
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if layers else [nn.Flatten()]
        if hp.dropout > 0:
            layers.append(nn.Dropout(hp.dropout))
        self.body = nn.Sequential(*layers)
        self.head = make_head(in_channels if hp.depth else in_channels * height * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, num_classes) for x of shape (batch, C, H, W) or (batch, C*H*W)."""
        x = x.reshape(x.shape[0], *self.input_shape)
        return self.head(self.body(x))


def _build_custom(import_path: str | None, hp: HyperParams, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    field = "model.import_path"
    if not import_path or import_path.count(":") != 1:
        raise InputError(field, f"family 'custom' needs 'package.module:factory', got {import_path!r}")
    module_name, attribute = import_path.split(":")
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(
            field, f"cannot import module {module_name!r} ({exc}): is it installed or on sys.path?"
        ) from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise InputError(field, f"{module_name!r} has no attribute {attribute!r}: check the factory name")
        target = getattr(target, part)
    if not callable(target):
        raise InputError(field, f"{import_path!r} is not callable: point it at a factory function or class")
    model = target(hp, list(input_shape), num_classes)
    if not isinstance(model, nn.Module):
        raise InputError(field, f"{import_path!r} returned {type(model).__name__}, not a torch.nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise InputError(field, f"the model from {import_path!r} has no trainable parameters")
    return model
