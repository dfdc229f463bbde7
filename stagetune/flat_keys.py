"""Nested settings as dotted keys (MLflow params, run fingerprints, config comparisons)."""

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def flat_hyperparams(hyperparams: BaseModel) -> dict[str, Any]:
    """Hyperparameters as flat keys (JSON values): the model's own as `params.<name>`, none when it has none."""
    return {k: v for k, v in flatten(hyperparams.model_dump(mode="json")).items() if v != {}}
