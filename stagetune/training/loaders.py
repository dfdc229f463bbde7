"""Seeded DataLoaders over in-memory arrays, with the class rebalancing strategy of HyperParams applied."""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from schemas.hyperparams import HyperParams
from stagetune.data.rebalance import BalancedBatchSampler, inverse_frequency_weights, oversample_indices
from stagetune.errors import InputError

Batch = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class TrainFeed:
    """The training batches and, for the class_weights strategy, the per-class loss weights."""

    loader: DataLoader[Batch]
    class_weights: torch.Tensor | None = None

    def loss_fn(self, device: torch.device) -> nn.CrossEntropyLoss:
        """Cross-entropy for training: weighted by class when the strategy asks for it."""
        weight = None if self.class_weights is None else self.class_weights.to(device)
        return nn.CrossEntropyLoss(weight=weight)


def to_dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    """Float32 features and int64 labels as a TensorDataset."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    return TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64))


def make_train_loader(
    x: np.ndarray,
    y: np.ndarray,
    hp: HyperParams,
    num_classes: int,
    seed: int,
    oversample_ratio: float = 1.0,
) -> TrainFeed:
    """Shuffled training batches of hp.batch_size under hp.rebalance; the same seed gives the same batches.

    - none: every row once per epoch, in a fresh order each epoch.
    - oversample: minority rows duplicated (once, up front) to `oversample_ratio` x the largest class.
    - balanced_batches: every batch holds about the same number of rows of each class.
    - class_weights: plain shuffled batches; the loss weights classes by inverse frequency.
    """
    dataset = to_dataset(x, y)
    generator = torch.Generator().manual_seed(seed)
    labels = np.asarray(y, dtype=np.int64)
    if hp.rebalance == "balanced_batches":
        classes = len(np.unique(labels))
        if hp.batch_size < classes:
            raise InputError(
                "batch_size", f"balanced_batches needs batch_size >= {classes} classes, got {hp.batch_size}"
            )
        sampler = BalancedBatchSampler(labels, hp.batch_size, seed)
        return TrainFeed(DataLoader(dataset, batch_sampler=sampler, num_workers=0))
    if hp.rebalance == "oversample":
        indices = oversample_indices(labels, oversample_ratio, np.random.default_rng(seed))
        features, targets = dataset.tensors
        dataset = TensorDataset(features[indices], targets[indices])
    weights = None
    if hp.rebalance == "class_weights":
        weights = torch.as_tensor(inverse_frequency_weights(labels, num_classes), dtype=torch.float32)
    loader = DataLoader(dataset, batch_size=hp.batch_size, shuffle=True, generator=generator, num_workers=0)
    return TrainFeed(loader, weights)


def make_eval_loader(x: np.ndarray, y: np.ndarray, batch_size: int) -> DataLoader[Batch]:
    """Batches in row order, for evaluation."""
    return DataLoader(to_dataset(x, y), batch_size=batch_size, shuffle=False, num_workers=0)


def endless_batches(loader: Iterable[Batch]) -> Iterator[Batch]:
    """The loader's batches, epoch after epoch (each epoch reshuffled by the loader)."""
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("the loader yielded no batches")
