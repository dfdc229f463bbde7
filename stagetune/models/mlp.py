"""The MLP family: hp.depth hidden layers of hp.width units; depth 0 is a linear model on the flat input."""

import math
from collections.abc import Sequence

import torch
from torch import nn

from schemas.config import SanityConfig
from schemas.hyperparams import HyperParams
from stagetune.models.base import ModelFamily
from stagetune.models.layers import init_hidden, make_activation, make_head


class MLP(nn.Module):
    """hp.depth x [Linear(hp.width) -> BatchNorm1d? -> activation -> Dropout?] then a Linear head.

    With hp.depth 0 it is flatten + the head: a linear model (logistic/linear regression).
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


class MLPFamily(ModelFamily):
    """Any input shape (flattened); width, depth, dropout, activation and batch norm tunable."""

    name = "mlp"
    architecture_fields = frozenset({"width", "depth", "dropout", "activation", "batch_norm"})

    def build(self, hp: HyperParams, input_shape: Sequence[int], output_size: int, import_path: str | None) -> MLP:
        """An MLP on the flattened input."""
        return MLP(hp, math.prod(input_shape), output_size)

    def overfit_changes(self, hp: HyperParams, cfg: SanityConfig) -> dict[str, object]:
        """cfg.overfit_width x cfg.overfit_depth, no batch norm."""
        return {"width": cfg.overfit_width, "depth": cfg.overfit_depth, "batch_norm": False}
