"""Building blocks every family shares: activations, hidden-layer initialisation and the output head.

Hidden layers get He (Kaiming) initialisation for ReLU-like activations and Xavier/Glorot for tanh
(TUNING-RULES.md, sources 002/004), biases start at zero. The output layer is a plain Linear that
produces logits; its weights start small (std HEAD_INIT_GAIN / sqrt(fan_in)) so the logits are near
zero and the initial cross-entropy is close to ln(num_classes), which the sanity gate checks.
"""

import math

from torch import nn

from schemas.hyperparams import ActivationName

# Logits start with a standard deviation of about HEAD_INIT_GAIN x the RMS of the last hidden layer
# (~1 after He init on standardised inputs): the initial loss then exceeds ln(C) by ~HEAD_INIT_GAIN^2 / 2.
HEAD_INIT_GAIN = 0.1
LEAKY_RELU_SLOPE = 0.01


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
