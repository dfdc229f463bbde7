"""The model families by name, and `build_model`, the one way every stage builds a model.

Adding a family: one file under `stagetune/models/` with a `ModelFamily` subclass, and one entry here.
"""

from collections.abc import Sequence

import torch
from torch import nn

from schemas.config import ModelConfig
from schemas.hyperparams import HyperParams
from stagetune.errors import InputError
from stagetune.models.base import ModelFamily
from stagetune.models.cnn import CNNFamily
from stagetune.models.custom import CustomFamily
from stagetune.models.layers import own_dropout_streams
from stagetune.models.mlp import MLPFamily
from stagetune.training.reproducibility import GLOBAL_RNG_LOCK

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (MLPFamily(), CNNFamily(), CustomFamily())}


def family_names() -> list[str]:
    """The registered family names, sorted."""
    return sorted(FAMILIES)


def get_family(name: str) -> ModelFamily:
    """The family called `name`; an InputError on `model.family` naming the registered ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise InputError(
            "model.family", f"unknown model family {name!r}: use one of {', '.join(family_names())}"
        ) from None


def check_model_config(model: ModelConfig) -> None:
    """An InputError for a family that is not registered, or settings it cannot honour."""
    get_family(model.family).check_config(model)


def tuned_fields(model: ModelConfig) -> frozenset[str]:
    """The built-in HyperParams fields the search samples, narrows and logs for `model`'s family."""
    return get_family(model.family).tuned_fields(model)


def build_model(
    family: str,
    hp: HyperParams,
    input_shape: Sequence[int],
    num_classes: int,
    import_path: str | None = None,
    *,
    seed: int | None = None,
) -> nn.Module:
    """Build the model of `family` for inputs of `input_shape` with `num_classes` outputs.

    With `seed`, the model is a function of the seed alone, whatever runs beside it in other threads
    (trials at `execution.concurrency` > 1 share one process):
    - its initial weights are drawn while this thread holds `GLOBAL_RNG_LOCK`, from torch's CPU
      generator seeded with `seed` inside a fork (restored afterwards): no other build can reseed or
      draw from it in between, and the caller's global random state is left as it was. (torch's
      layer constructors draw from the global generator; a user's factory may too: one lock covers
      every family.)
    - its nn.Dropout layers are replaced by `SeededDropout`s drawing masks from streams of their own
      (seeded from `seed`): during training no trial touches the global generator.
    """
    builder = get_family(family)
    if seed is None:
        return builder.build(hp, input_shape, num_classes, import_path)
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = builder.build(hp, input_shape, num_classes, import_path)
    own_dropout_streams(model, seed)
    return model
