"""Seeds of training runs, and the deterministic-algorithms switch (README, "Reproducibility").

A trial's random streams (initial weights, data order, dropout masks, augmentation) are all seeded
from `stream_seed(config.seed, stage, trial number)`, and none of them is torch's global generator
while training: trials running side by side in threads then give the values they give alone.

On the CPU, results depend on one more thing: the number of torch threads an op runs on (it orders
the partial sums of matrix products and reductions). `cpu_threads` gives every trial the same count
at a given concurrency, and `execution.cpu_threads_per_trial` the same count at any concurrency.

`use_deterministic_algorithms` is the CUDA side: without it some CUDA kernels (atomic adds, some cuDNN
convolution algorithms) accumulate in whatever order threads finish, so two runs of one seed differ in
the last bits, and the differences grow over epochs.
"""

import logging
import os
import threading
import zlib

import numpy as np
import torch

from schemas.config import ExecutionConfig

LOGGER = logging.getLogger(__name__)

# Held while torch's global CPU generator is seeded, and while a model is built from it: torch has one per
# process, and trials in threads would otherwise reseed it under each other's model builds.
GLOBAL_RNG_LOCK = threading.Lock()

# cuBLAS needs a fixed workspace for reproducible results (CUDA >= 10.2); ":4096:8" is NVIDIA's setting
# that costs ~24 MiB of GPU memory (":16:8" saves it and may be slower).
CUBLAS_WORKSPACE = ":4096:8"


def stream_seed(seed: int, *labels: int | str) -> int:
    """A seed in [0, 2**31) for the stream named by `labels` (e.g. a stage and a trial number) under `seed`.

    Distinct labels give independent streams (numpy's SeedSequence mixes them); the same labels give
    the same seed in any process, on any machine. Strings are mapped by their CRC-32.
    """
    words = [seed, *(zlib.crc32(label.encode()) if isinstance(label, str) else label for label in labels)]
    return int(np.random.SeedSequence(words).generate_state(1)[0] >> 1)


def seed_global_generator(seed: int) -> None:
    """Seed torch's global generator, for randomness a trial's own streams cannot reach (a custom model's
    forward drawing from it), without reseeding a model build in progress in another thread."""
    with GLOBAL_RNG_LOCK:
        torch.manual_seed(seed)


def use_deterministic_algorithms(enabled: bool) -> None:
    """Ask torch for deterministic kernels (or lift the request): CUDA results then repeat exactly.

    Sets `torch.use_deterministic_algorithms`, turns off cuDNN's benchmark and asks for its
    deterministic kernels, and sets CUBLAS_WORKSPACE_CONFIG (unless already set) — cuBLAS reads it
    when its first handle is made, so call this before any CUDA work, as the pipeline does at start.
    An op with no deterministic CUDA kernel then raises a RuntimeError naming it instead of
    running nondeterministically. Process-wide: every trial of the run shares it.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            LOGGER.warning(
                "execution.deterministic: CUDA was initialised before it was set; cuBLAS may keep a "
                "nondeterministic workspace (set CUBLAS_WORKSPACE_CONFIG=%s before starting)",
                CUBLAS_WORKSPACE,
            )
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False if enabled else torch.backends.cudnn.benchmark


_TORCH_DEFAULT_THREADS: list[int] = []


def cpu_threads(execution: ExecutionConfig) -> int:
    """The torch CPU threads of each trial: `cpu_threads_per_trial`, else the cores split between the trials
    that run at once (concurrent trials each using every core slow each other down), else torch's default."""
    if not _TORCH_DEFAULT_THREADS:  # torch's own choice, before any run of this process changed it
        _TORCH_DEFAULT_THREADS.append(torch.get_num_threads())
    if execution.cpu_threads_per_trial is not None:
        return execution.cpu_threads_per_trial
    if execution.concurrency > 1:
        return max(1, (os.cpu_count() or 1) // execution.concurrency)
    return _TORCH_DEFAULT_THREADS[0]
