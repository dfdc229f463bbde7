"""Turn the configured device name into a torch.device, failing early when it is not there."""

import torch

from stagetune.errors import InputError


def resolve_device(name: str) -> torch.device:
    """Map "auto", "cpu", "cuda", "cuda:N" or "mps" to a usable torch.device.

    "auto" picks CUDA when available, else the CPU. Naming an accelerator that this machine lacks
    raises InputError("execution.device", ...) instead of failing later inside a training step.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(
            "execution.device", f"{name!r} is not a device name: use auto, cpu, cuda, cuda:N or mps"
        ) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("execution.device", f"{name!r} requested but CUDA is not available: use auto or cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError("execution.device", f"{name!r} requested but only {count} CUDA device(s) exist")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("execution.device", f"{name!r} requested but MPS is not available: use auto or cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InputError("execution.device", f"{name!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return device
