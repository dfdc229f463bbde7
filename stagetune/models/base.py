"""What a model family is: how it builds, which hyperparameters it reads, what the sanity gate overfits.

A family is one file under `stagetune/models/` with a `ModelFamily` subclass, listed in
`stagetune.models.registry.FAMILIES`. The search samples, narrows and logs only the fields a family
reads (`tuned_fields`): an MLP's trials do not draw CNN channels, so they cost no samples and do not
mislead TPE/GP.
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from torch import nn

from schemas.config import ModelConfig, SanityConfig
from schemas.hyperparams import HyperParams
from stagetune.errors import InputError

# What every family uses: the optimizer and the data feed (batches, rebalancing, loss).
GENERIC_FIELDS = frozenset(
    {"optimizer", "learning_rate", "weight_decay", "momentum", "batch_size", "rebalance", "loss", "augment"}
)


class ModelFamily(ABC):
    """One model family: its name, the built-in fields it reads, how it builds, its overfit variant."""

    name: ClassVar[str]
    architecture_fields: ClassVar[frozenset[str]]
    """The built-in architecture fields (`ARCHITECTURE_FIELDS`) its models read."""
    reads_params: ClassVar[bool] = False
    """Whether its models read the user's own hyperparameters (`model.params`, `hp.params`)."""

    def tuned_fields(self, model: ModelConfig) -> frozenset[str]:
        """The built-in HyperParams fields a search samples for `model`; the others keep their baseline values."""
        return GENERIC_FIELDS | self.architecture_fields

    def check_config(self, model: ModelConfig) -> None:
        """An InputError for settings this family cannot honour (checked with the config, before any run)."""
        if model.params and not self.reads_params:
            raise InputError(
                "model.params",
                f"family {self.name!r} does not read the model's own hyperparameters {sorted(model.params)}: "
                "remove model.params and space.params, or use family custom with a factory that reads hp.params",
            )

    def check_input_shape(self, input_shape: Sequence[int]) -> None:
        """An InputError if this family cannot take inputs of `input_shape` (known once the data is loaded).

        Every shape by default (a model that flattens its input takes any).
        """
        return None

    @abstractmethod
    def build(
        self, hp: HyperParams, input_shape: Sequence[int], output_size: int, import_path: str | None
    ) -> nn.Module:
        """The model for inputs of `input_shape` with `output_size` outputs (logits or regression values)."""

    @abstractmethod
    def overfit_changes(self, hp: HyperParams, cfg: SanityConfig) -> dict[str, object]:
        """Architecture changes that make the baseline large and unregularised for the sanity gate's overfit check."""
