"""Checkpoints that rebuild their model from plain data, and champion/challenger promotion in MLflow's registry."""

from stagetune.registry.champion import (
    CHALLENGER,
    CHAMPION,
    TAG_DATA_FINGERPRINT,
    TAG_METRIC,
    TAG_METRIC_VALUE,
    TAG_ROLE,
    compare_with_champion,
    register_and_promote,
)
from stagetune.registry.checkpoint import (
    CheckpointError,
    LoadedModel,
    load_checkpoint,
    read_model_args,
    save_checkpoint,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "TAG_DATA_FINGERPRINT",
    "TAG_METRIC",
    "TAG_METRIC_VALUE",
    "TAG_ROLE",
    "CheckpointError",
    "LoadedModel",
    "compare_with_champion",
    "load_checkpoint",
    "read_model_args",
    "register_and_promote",
    "save_checkpoint",
]
