"""Model checkpoints that hold only tensors and plain Python values, and rebuild their model from them.

Like nanoGPT's, a checkpoint carries the arguments that built its model (family, hyperparameters,
input shape, classes), so `load_checkpoint` needs nothing but the file. Because it holds no pickled
objects, it loads with `torch.load(weights_only=True)`: a file that smuggles in arbitrary objects is
refused instead of executed. (A `custom` family still imports its factory by `import_path`: only
load checkpoints you trust to name code.)
"""

import pickle
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from schemas.final import TestMetrics
from schemas.hyperparams import HyperParams
from stagetune.atomic_file import atomic_binary_file
from stagetune.models import build_model
from stagetune.models.ensemble import ensemble_of

CHECKPOINT_FORMAT = 1
"""Bump when the layout of the checkpoint dictionary changes."""


class CheckpointError(ValueError):
    """A checkpoint file that is not one of ours, is of an unknown format, or holds more than plain data."""


@dataclass(frozen=True)
class LoadedModel:
    """A model rebuilt from a checkpoint (in eval mode, on the CPU) and the arguments it was built from."""

    model: nn.Module
    family: str
    hyperparams: HyperParams
    input_shape: list[int]
    num_classes: int
    class_names: list[str]
    import_path: str | None
    data_fingerprint: str
    stagetune_version: str
    metrics: TestMetrics | None


def save_checkpoint(
    path: Path,
    model: nn.Module,
    *,
    family: str,
    hp: HyperParams,
    input_shape: list[int],
    num_classes: int,
    class_names: list[str],
    import_path: str | None,
    data_fingerprint: str,
    metrics: TestMetrics | None,
    task_args: dict[str, Any] | None = None,
    ensemble_members: int = 1,
) -> None:
    """Write the model's weights and the arguments that rebuild it to `path`, atomically.

    The file holds a dict of CPU tensors and plain Python values only. It is written to a temporary
    file in the same folder and renamed into place, so readers never see half a checkpoint.
    `task_args` (plain values) join the model arguments: for regression the task, the target names and
    the mean/std that turn the standardised outputs back into the targets' units.
    For a regressor `num_classes` is the number of outputs and `class_names` the target names.
    `ensemble_members` > 1: `model` is a `MeanEnsemble` of that many networks built from the same arguments.
    """
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "model_args": {
            "family": family,
            "hyperparams": hp.model_dump(mode="json"),
            "input_shape": [int(v) for v in input_shape],
            "num_classes": int(num_classes),
            "class_names": [str(name) for name in class_names],
            "import_path": import_path,
            "data_fingerprint": data_fingerprint,
            "stagetune_version": _stagetune_version(),
            "ensemble_members": int(ensemble_members),
            **(task_args or {}),
        },
        "metrics": None if metrics is None else metrics.model_dump(mode="python"),
        "state_dict": {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_binary_file(path) as stream:
        torch.save(payload, stream)


def read_model_args(path: Path) -> dict[str, Any]:
    """The plain-data model arguments stored in a checkpoint (family, hyperparams, shapes, classes, ...)."""
    return dict(_read(path)["model_args"])


def load_checkpoint(path: Path) -> LoadedModel:
    """Rebuild the model saved at `path` on the CPU, with its weights, in eval mode.

    Raises CheckpointError for a file holding anything but tensors and plain Python values
    (`torch.load(weights_only=True)` refuses it), or one of an unknown format.
    """
    payload = _read(path)
    args = payload["model_args"]
    hp = HyperParams(**args["hyperparams"])
    members = [
        build_model(args["family"], hp, args["input_shape"], args["num_classes"], args["import_path"])
        for _ in range(int(args.get("ensemble_members", 1)))  # checkpoints from before ensembles hold one network
    ]
    model = ensemble_of(members, classifier=args.get("task", "classification") == "classification")
    model.load_state_dict(payload["state_dict"])
    model.eval()
    metrics = payload.get("metrics")
    return LoadedModel(
        model=model,
        family=args["family"],
        hyperparams=hp,
        input_shape=list(args["input_shape"]),
        num_classes=int(args["num_classes"]),
        class_names=list(args["class_names"]),
        import_path=args["import_path"],
        data_fingerprint=args["data_fingerprint"],
        stagetune_version=args["stagetune_version"],
        metrics=None if metrics is None else TestMetrics.model_validate(metrics),
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refused to load {path}: it holds objects other than tensors and plain Python values "
            f"(torch.load weights_only): {exc}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a stagetune checkpoint of format {CHECKPOINT_FORMAT} (found {found!r})")
    missing = {"model_args", "state_dict"} - payload.keys()
    if missing:
        raise CheckpointError(f"{path} lacks {sorted(missing)}")
    return payload


def _stagetune_version() -> str:
    try:
        return version("stagetune")
    except PackageNotFoundError:
        return "unknown"
