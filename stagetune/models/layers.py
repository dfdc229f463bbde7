"""Building blocks every family shares: activations, hidden-layer initialisation and the output head.

Hidden layers get He (Kaiming) initialisation for ReLU-like activations and Xavier/Glorot for tanh
(TUNING-RULES.md, sources 002/004), biases start at zero. The output layer is a plain Linear that
produces logits; its weights start small (std HEAD_INIT_GAIN / sqrt(fan_in)) so the logits are near
zero and the initial cross-entropy is close to ln(num_classes), which the sanity gate checks.
"""

import math

import numpy as np
import torch
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


class SeededDropout(nn.Dropout):
    """nn.Dropout whose masks come from a generator of its own, not from torch's global generator.

    Trials run side by side in threads of one process (`execution.concurrency` > 1), and torch's
    global generator is one per process: with plain nn.Dropout each trial's masks depend on how the
    other trials' draws interleaved with its own, so the same seed gave different trial values.
    `torch.nn.functional.dropout` takes no generator (torch 2.13), hence this module: the same
    Bernoulli mask scaled by 1 / (1 - p) as torch's CPU dropout, drawn from a stream seeded with
    `seed`, one generator per device (created on first use there). On CUDA this is three kernels
    where torch's fused dropout is one (see README, "Reproducibility").

    It holds no parameters or buffers: its state dict is nn.Dropout's (empty), so checkpoints load
    into either.
    """

    def __init__(self, p: float, seed: int, inplace: bool = False) -> None:
        super().__init__(p, inplace)
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        """The mask generator on `device` (seeded with `self.seed` on first use)."""
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Zero each element with probability p and scale the rest by 1 / (1 - p) (training mode only)."""
        if not self.training or self.p == 0:
            return input
        if self.p == 1:
            return input.zero_() if self.inplace else torch.zeros_like(input)
        keep = torch.empty_like(input).bernoulli_(1 - self.p, generator=self.generator(input.device))
        keep.div_(1 - self.p)
        return input.mul_(keep) if self.inplace else input * keep

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, seed={self.seed}"


def own_dropout_streams(model: nn.Module, seed: int) -> int:
    """Replace every plain nn.Dropout in `model` by a SeededDropout with its own stream; returns how many.

    Layer k (in `named_modules` order) draws from a stream seeded with (seed, k): the same seed gives
    the same masks, whatever else runs in the process. Only exact nn.Dropout is replaced: channel-wise
    dropout (Dropout1d/2d/3d), AlphaDropout and randomness inside a custom model's forward still
    draw from the global generator (README, "Reproducibility").
    """
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                stream = int(np.random.SeedSequence([seed, replaced]).generate_state(1)[0])
                setattr(parent, name, SeededDropout(child.p, stream, child.inplace))
                replaced += 1
    return replaced
