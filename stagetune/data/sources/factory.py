"""py: source: `data.source: "py:package.module:factory"` names a function that returns torch Datasets.

Trust boundary (as for `model.import_path`): the module is imported and the function called in the
stagetune process and its DataLoader workers, with the user's rights. Point it only at code you would
run yourself. The function takes no required argument and returns either one map-style Dataset (stagetune
splits it) or three (a dict with train/val/test, or a 3-tuple). Samples are (x, y): x a tensor of any
shape (the input shape), y an integer class or a float (vector). A `targets` attribute (a sequence or
array of the labels) is used for stratification and rebalancing; without it the labels are read by
indexing every sample once at Stage 1 (decoding everything once: give `targets` for big datasets).
"""

import hashlib
import inspect
import logging
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import numpy as np
import torch

from schemas.config import DataConfig
from stagetune.data.source import IndexedSource
from stagetune.data.targets import MAX_CLASSES_FOR_AUTO
from stagetune.errors import InputError
from stagetune.user_code import resolve_user_callable

FIELD = "data.source"
SPLITS = ("train", "val", "test")
LOGGER = logging.getLogger(__name__)


class DatasetReader:
    """x of sample i of a user's Dataset, as a float32 tensor."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, index: int) -> torch.Tensor:
        """The input of sample `index` (its first element)."""
        return torch.as_tensor(self.dataset[index][0], dtype=torch.float32)


def resolve_dataset_factory(source: str) -> Callable[[], object]:
    """The function `py:package.module:factory` names; an InputError on data.source if it cannot be called bare."""
    target = resolve_user_callable(source.removeprefix("py:"), FIELD, "a function returning torch Datasets")
    try:
        inspect.signature(target).bind()
    except (TypeError, ValueError) as error:
        raise InputError(
            FIELD, f"{source!r} must be callable without arguments ({error}): give its parameters defaults"
        ) from None
    return target


@cache
def _datasets(source: str) -> dict[str, Any]:
    # Called once per process: trials and stages of one run share the datasets the factory built.
    made = resolve_dataset_factory(source)()
    if isinstance(made, Mapping):
        if set(made) != set(SPLITS):
            raise InputError(FIELD, f"{source!r} returned a dict with keys {sorted(made)}: use train, val and test")
        parts = {name: made[name] for name in SPLITS}
    elif isinstance(made, tuple | list):
        if len(made) != len(SPLITS):
            raise InputError(FIELD, f"{source!r} returned {len(made)} datasets: return one, or train, val and test")
        parts = dict(zip(SPLITS, made, strict=True))
    else:
        parts = {"all": made}
    for name, dataset in parts.items():
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise InputError(
                FIELD, f"{source!r} returned {type(dataset).__name__} for {name!r}: return map-style torch Datasets"
            )
        if len(dataset) < 1:
            raise InputError(FIELD, f"the {name!r} dataset of {source!r} is empty")
    return parts


def _labels(dataset: Any, name: str, source: str) -> np.ndarray:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        LOGGER.warning("%s: the %r dataset has no `targets`: reading every sample once for its label", source, name)
        targets = [dataset[i][1] for i in range(len(dataset))]
    if isinstance(targets, torch.Tensor):
        values = targets.detach().cpu().numpy()
    else:
        values = np.asarray([t.numpy() if isinstance(t, torch.Tensor) else t for t in targets])
    if len(values) != len(dataset):
        raise InputError(FIELD, f"the {name!r} dataset has {len(dataset)} samples but {len(values)} targets")
    return values


def open_source(cfg: DataConfig, seed: int) -> IndexedSource:
    """Call the factory, read the labels, and decide the task (integer labels: classification)."""
    parts = _datasets(cfg.source)
    raw = {name: _labels(dataset, name, cfg.source) for name, dataset in parts.items()}
    joined = np.concatenate([v.reshape(len(v), -1) if v.ndim > 1 else v for v in raw.values()])
    integral = np.issubdtype(joined.dtype, np.integer) or np.issubdtype(joined.dtype, np.bool_)
    task, reason = cfg.task, "set in data.task"
    labels: dict[str, np.ndarray]
    class_names: tuple[str, ...]
    target_names: tuple[str, ...]
    if task == "auto":
        few = integral and joined.ndim == 1 and len(np.unique(joined)) <= MAX_CLASSES_FOR_AUTO
        task = "classification" if few else "regression"
        reason = "integer targets" + (" with few distinct values" if few else "") if integral else "float targets"
    if task == "classification":
        if joined.ndim != 1:
            raise InputError(FIELD, f"classification needs one label per sample, got targets of shape {joined.shape}")
        classes = np.unique(joined)
        labels = {name: np.searchsorted(classes, v).astype(np.int64) for name, v in raw.items()}
        class_names, target_names = tuple(str(c) for c in classes.tolist()), ()
    else:
        labels = {name: np.asarray(v, dtype=np.float64).reshape(len(v), -1) for name, v in raw.items()}
        width = next(iter(labels.values())).shape[1]
        class_names, target_names = (), tuple(f"y{k}" for k in range(width)) if width > 1 else ("y",)
    first = torch.as_tensor(next(iter(parts.values()))[0][0])
    digest = hashlib.sha256(cfg.source.encode())
    for name, values in labels.items():
        digest.update(f"{name}:{len(values)}:".encode() + np.ascontiguousarray(values).tobytes())
    return IndexedSource(
        kind="factory",
        parts={name: DatasetReader(dataset) for name, dataset in parts.items()},
        labels=labels,
        task=task,
        task_reason=reason,
        class_names=class_names,
        target_names=target_names,
        input_shape=tuple(first.shape),
        content_hash=digest.hexdigest(),
        manifest={"source": cfg.source, "lengths": {name: len(d) for name, d in parts.items()}},
    )


def reopen(manifest: dict[str, Any]) -> dict[str, DatasetReader]:
    """Readers over the factory's datasets (called again in a new process); lengths must match Stage 1's."""
    parts = _datasets(manifest["source"])
    lengths = {name: len(d) for name, d in parts.items()}
    if lengths != manifest["lengths"]:
        raise InputError(
            FIELD,
            f"{manifest['source']!r} now returns datasets of lengths {lengths}, not {manifest['lengths']} as at "
            "Stage 1: the factory must be deterministic (start a new run after changing the data)",
        )
    return {name: DatasetReader(dataset) for name, dataset in parts.items()}
