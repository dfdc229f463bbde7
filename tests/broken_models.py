"""Custom-family factories (`tests.broken_models:<name>`) with the bugs the sanity gate must catch.

Each wraps the real MLP so that the only difference from a correct model is the bug itself.
"""

from collections.abc import Sequence

import torch
from torch import nn

from schemas.hyperparams import HyperParams
from stagetune.models.mlp import MLP


def _mlp(hp: HyperParams, input_shape: Sequence[int], num_classes: int) -> MLP:
    return MLP(hp, int(torch.tensor(input_shape).prod()), num_classes)


class InputIgnoringMLP(nn.Module):
    """Feeds zeros instead of its input (the classic wrong-variable bug): outputs can't depend on x."""

    def __init__(self, hp: HyperParams, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.mlp = _mlp(hp, input_shape, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.zeros_like(x))


class NanMLP(nn.Module):
    """Divides its logits by a zero normaliser: every output is inf or NaN."""

    def __init__(self, hp: HyperParams, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.mlp = _mlp(hp, input_shape, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.mlp(x)
        return logits / (logits - logits).sum(dim=1, keepdim=True)


class ScaledLogitsMLP(nn.Module):
    """Multiplies its logits by 100 (e.g. a temperature applied the wrong way round)."""

    def __init__(self, hp: HyperParams, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.mlp = _mlp(hp, input_shape, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 100.0 * self.mlp(x)


class NanAfterSteps(nn.Module):
    """A correct MLP until it has run `steps` training forwards, then NaN (divergence mid-run)."""

    def __init__(self, hp: HyperParams, input_shape: Sequence[int], num_classes: int, steps: int) -> None:
        super().__init__()
        self.mlp = _mlp(hp, input_shape, num_classes)
        self.steps = steps
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
        logits = self.mlp(x)
        return logits * float("nan") if self.calls > self.steps else logits


def input_ignoring(hp: HyperParams, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Factory for InputIgnoringMLP."""
    return InputIgnoringMLP(hp, input_shape, num_classes)


def nan_output(hp: HyperParams, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Factory for NanMLP."""
    return NanMLP(hp, input_shape, num_classes)


def scaled_logits(hp: HyperParams, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Factory for ScaledLogitsMLP."""
    return ScaledLogitsMLP(hp, input_shape, num_classes)


def correct_mlp(hp: HyperParams, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """The plain MLP through the custom-family path."""
    return _mlp(hp, input_shape, num_classes)


def not_a_module(hp: HyperParams, input_shape: Sequence[int], num_classes: int) -> object:
    """Returns a dict instead of a model."""
    return {"hp": hp}


def wrong_class_count(hp: HyperParams, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """An MLP with a hard-coded 3-way output, whatever the number of classes."""
    return _mlp(hp, input_shape, 3)
