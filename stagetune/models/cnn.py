"""The CNN family: 3x3 conv blocks on [C, H, W] images of any size and channel count, global average pooling."""

from collections.abc import Sequence

import torch
from torch import nn

from schemas.config import SanityConfig
from schemas.hyperparams import HyperParams
from stagetune.errors import InputError
from stagetune.models.base import ModelFamily
from stagetune.models.layers import init_hidden, make_activation, make_head

# Channels double per block up to this many (or hp.channels if larger), so deep stacks stay sane.
MAX_CNN_CHANNELS = 512


class CNN(nn.Module):
    """hp.depth blocks of [3x3 conv -> BatchNorm2d? -> activation -> 2x2 max-pool while H, W >= 2].

    Block i has hp.channels * 2**i filters (capped at MAX_CNN_CHANNELS); then global average
    pooling, dropout and a Linear head. With hp.depth 0 the head reads every pixel (a linear model on
    the pixels: averaging them away would leave one number per channel). Flat inputs of C*H*W features
    are reshaped to (C, H, W).
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
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if hp.depth else [nn.Flatten()]
        if hp.dropout > 0:
            layers.append(nn.Dropout(hp.dropout))
        self.body = nn.Sequential(*layers)
        self.head = make_head(in_channels if hp.depth else in_channels * height * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, num_classes) for x of shape (batch, C, H, W) or (batch, C*H*W)."""
        x = x.reshape(x.shape[0], *self.input_shape)
        return self.head(self.body(x))


class CNNFamily(ModelFamily):
    """Images only; depth, channels (powers of two), dropout, activation and batch norm tunable."""

    name = "cnn"
    architecture_fields = frozenset({"depth", "channels", "dropout", "activation", "batch_norm"})

    def check_input_shape(self, input_shape: Sequence[int]) -> None:
        """Refuse anything but one [C, H, W] image per example (a flat table has no pixels to convolve)."""
        if len(input_shape) != 3 or any(int(v) < 1 for v in input_shape):
            raise InputError(
                "model.family",
                f"'cnn' needs image-shaped input [C, H, W], but the data give examples of shape {list(input_shape)} "
                "(a flat table): use mlp, or an image source",
            )

    def build(self, hp: HyperParams, input_shape: Sequence[int], output_size: int, import_path: str | None) -> CNN:
        """A CNN for images of `input_shape` = [C, H, W]."""
        self.check_input_shape(input_shape)
        channels, height, width = (int(v) for v in input_shape)
        return CNN(hp, (channels, height, width), output_size)

    def overfit_changes(self, hp: HyperParams, cfg: SanityConfig) -> dict[str, object]:
        """cfg.overfit_depth blocks starting at max(hp.channels, cfg.overfit_width // 8) filters, no batch norm.

        (512 // 8 = 64 filters, doubling per block; rounded down to a power of two.)
        """
        start = max(hp.channels, cfg.overfit_width // 8)
        return {"channels": 1 << (start.bit_length() - 1), "depth": cfg.overfit_depth, "batch_norm": False}
