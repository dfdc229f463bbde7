"""A residual MLP whose shape is set by its own hyperparameters, read from `hp.params`.

stagetune calls `build(hp, input_shape, num_classes)` for every trial. `hp.params` holds the values
sampled from `space.params` in the config (baselines in `model.params`):

- `blocks` (int): residual blocks, each x + Linear(act(Linear(norm(x)))), 0 = a linear model on a projection;
- `hidden_size` (int, log scale): the width of every block;
- `norm` (layer | batch | none): the normalisation at the start of each block.

It also reads one built-in hyperparameter, `hp.dropout`, which the config lists in `model.uses` so that the
search tunes it too; everything else about the optimizer comes from stagetune.
"""

import math
from collections.abc import Sequence

import torch
from torch import nn

from schemas.hyperparams import HyperParams

# The output layer starts small, so the initial logits are near zero and the initial loss near ln(classes):
# stagetune's sanity gate checks that before any search runs.
HEAD_INIT_STD = 0.01


def _norm(kind: object, width: int) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(width)
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be layer, batch or none, got {kind!r}")


class ResidualBlock(nn.Module):
    """x + Linear(GELU(Linear(norm(x)))), with dropout before the residual sum."""

    def __init__(self, width: int, norm: object, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(norm, width),
            nn.Linear(width, width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(width, width),
        )
        # The second linear starts at zero: each block starts as the identity, so depth does not blow up the scale.
        last = self.body[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The input plus the block's correction."""
        return x + self.body(x)


class ResidualMLP(nn.Module):
    """Flatten -> Linear(hidden_size) -> blocks x ResidualBlock -> norm -> Linear head."""

    def __init__(
        self, in_features: int, outputs: int, blocks: int, hidden_size: int, norm: object, dropout: float
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden_size))
        self.blocks = nn.Sequential(*(ResidualBlock(hidden_size, norm, dropout) for _ in range(blocks)))
        self.norm = _norm(norm, hidden_size)
        self.head = nn.Linear(hidden_size, outputs)
        nn.init.normal_(self.head.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (classification) or outputs (regression), shape (batch, outputs)."""
        return self.head(self.norm(self.blocks(self.stem(x))))


def build(hp: HyperParams, input_shape: Sequence[int], num_classes: int) -> ResidualMLP:
    """The factory `model.import_path` names: a ResidualMLP shaped by `hp.params` and `hp.dropout`."""
    return ResidualMLP(
        in_features=math.prod(input_shape),
        outputs=num_classes,
        blocks=int(hp.params["blocks"]),
        hidden_size=int(hp.params["hidden_size"]),
        norm=hp.params["norm"],
        dropout=hp.dropout,
    )
