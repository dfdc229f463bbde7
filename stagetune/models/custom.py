"""The custom family: the user's factory `package.module:factory`, called as factory(hp, input_shape, num_classes).

Trust boundary (README, "Your own model"): the factory is the user's own code, imported and run with
the pipeline's permissions, like a training script they run themselves. A checkpoint of a custom model
stores the import path, never pickled code.
"""

from collections.abc import Sequence

from torch import nn

from schemas.config import ModelConfig, SanityConfig
from schemas.hyperparams import HyperParams
from stagetune.errors import InputError
from stagetune.models.base import GENERIC_FIELDS, ModelFamily
from stagetune.user_code import resolve_user_callable


class CustomFamily(ModelFamily):
    """Tunes the optimizer's and data feed's fields, the user's own `params`, and the built-ins in `model.uses`."""

    name = "custom"
    architecture_fields = frozenset()
    reads_params = True

    def tuned_fields(self, model: ModelConfig) -> frozenset[str]:
        """The generic fields plus the built-in architecture fields the config says the factory reads."""
        return GENERIC_FIELDS | frozenset(model.uses)

    def build(
        self, hp: HyperParams, input_shape: Sequence[int], output_size: int, import_path: str | None
    ) -> nn.Module:
        """Whatever the factory returns, checked to be a trainable torch module."""
        field = "model.import_path"
        if not import_path or import_path.count(":") != 1:
            raise InputError(field, f"family 'custom' needs 'package.module:factory', got {import_path!r}")
        target = resolve_user_callable(import_path, field, "a factory function or class")
        model = target(hp, list(input_shape), output_size)
        if not isinstance(model, nn.Module):
            raise InputError(field, f"{import_path!r} returned {type(model).__name__}, not a torch.nn.Module")
        if not any(p.requires_grad for p in model.parameters()):
            raise InputError(field, f"the model from {import_path!r} has no trainable parameters")
        return model

    def overfit_changes(self, hp: HyperParams, cfg: SanityConfig) -> dict[str, object]:
        """None: the factory decides the size (its own params keep their baseline values)."""
        return {}
