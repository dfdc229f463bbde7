"""Class rebalancing primitives on label arrays: oversampling, class weights, balanced batches."""

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def class_counts(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Examples per class, including classes with zero examples."""
    return np.bincount(y.astype(np.int64), minlength=num_classes)


def oversample_indices(y: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Row indices where every class is duplicated up to `ratio` x the largest class.

    Every original row is kept once; the extra rows of a class are drawn with replacement from it.
    Classes already at or above the target are left as they are.
    """
    counts = np.bincount(y.astype(np.int64))
    target = int(np.ceil(ratio * counts.max()))
    parts = [np.arange(len(y))]
    for label, count in enumerate(counts):
        if 0 < count < target:
            members = np.flatnonzero(y == label)
            parts.append(rng.choice(members, size=target - count, replace=True))
    return np.concatenate(parts)


def inverse_frequency_weights(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Loss weights n / (k * n_c) ("balanced"), so every present class carries the same total weight."""
    counts = class_counts(y, num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes, dtype=np.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


class BalancedBatchSampler(Sampler[list[int]]):
    """Yields batches holding (as near as divisibility allows) the same number of rows of each class.

    An epoch has as many batches as a plain epoch would (ceil(n / batch_size)). Within a class, rows
    are taken in a fresh random order and the order restarts when exhausted, so minority rows repeat
    and majority rows are spread over epochs.
    """

    def __init__(self, labels: np.ndarray, batch_size: int, seed: int) -> None:
        self.labels = labels.astype(np.int64)
        self.classes = np.unique(self.labels)
        if batch_size < len(self.classes):
            raise ValueError(f"batch_size {batch_size} is smaller than the {len(self.classes)} classes")
        self.batch_size = batch_size
        self.num_batches = int(np.ceil(len(self.labels) / batch_size))
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator))
        rng = np.random.default_rng(seed)
        streams = {int(c): _endless_shuffle(np.flatnonzero(self.labels == c), rng) for c in self.classes}
        per_class, extra = divmod(self.batch_size, len(self.classes))
        for _ in range(self.num_batches):
            # The `extra` slots go to a different random subset of classes in every batch.
            lucky = set(rng.choice(self.classes, size=extra, replace=False).tolist()) if extra else set()
            batch: list[int] = []
            for c in self.classes:
                take = per_class + (1 if int(c) in lucky else 0)
                batch.extend(next(streams[int(c)]) for _ in range(take))
            yield batch


def _endless_shuffle(indices: np.ndarray, rng: np.random.Generator) -> Iterator[int]:
    while True:
        yield from rng.permutation(indices).tolist()
