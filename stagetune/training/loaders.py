"""Seeded batches, with the class rebalancing strategy of HyperParams applied, over one of two inputs.

In-memory arrays (tables, digits): the data are tensors in memory, so a batch is one indexing
operation (`x[rows]`), not a DataLoader fetching and collating row by row, which cost about as much
as a small model's step and ran in every trial's every epoch (figures: bench/README.md).

Lazily read rows (`LazyRows`: image folders, image CSVs, py: factories): a torch DataLoader with
`num_workers` worker processes reads and collates each batch (`LazyBatches`), so only the batches in
flight are in memory. Both yield the same (inputs, targets) batches and take the same strategies.
"""

import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler, TensorDataset

from schemas.config import ExecutionConfig
from schemas.hyperparams import HyperParams
from stagetune.data.rebalance import BalancedBatchSampler, inverse_frequency_weights, oversample_indices
from stagetune.data.source import Features, LazyRows, LoadOptions
from stagetune.errors import InputError
from stagetune.task.base import Task
from stagetune.task.classification import ClassificationTask

Batch = tuple[torch.Tensor, ...]
BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TrainFeed:
    """The training batches, the task they train, for the class_weights strategy the per-class loss weights,
    and the augmentation `fit` applies to each training batch once it is on the device (None: none)."""

    loader: "TensorBatches | LazyBatches"
    class_weights: torch.Tensor | None = None
    task: Task = field(default_factory=lambda: ClassificationTask([]))
    augment: BatchTransform | None = None

    def loss_fn(self, device: torch.device) -> nn.Module:
        """The task's training loss: cross-entropy weighted by class when the strategy asks for it."""
        weight = None if self.class_weights is None else self.class_weights.to(device)
        return self.task.train_loss(weight).to(device)


class TensorBatches:
    """Batches of rows of in-memory tensors; each iteration is one epoch.

    Rows come in order (`shuffle` False), in a fresh random order each epoch drawn from `generator`,
    or as the row lists of `batch_sampler` (e.g. balanced batches).
    """

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        batch_sampler: Iterable[list[int]] | None = None,
    ) -> None:
        if len({len(t) for t in tensors}) != 1:
            raise ValueError(f"tensors of different lengths: {[len(t) for t in tensors]}")
        self.tensors = tuple(tensors)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.batch_sampler = batch_sampler

    def __len__(self) -> int:
        if self.batch_sampler is not None:
            return len(self.batch_sampler)  # type: ignore[arg-type]
        return -(-len(self.tensors[0]) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if self.batch_sampler is not None:
            for rows in self.batch_sampler:
                index = torch.as_tensor(rows, dtype=torch.int64)
                yield tuple(t[index] for t in self.tensors)
            return
        n = len(self.tensors[0])
        if not self.shuffle:
            for start in range(0, n, self.batch_size):
                yield tuple(t[start : start + self.batch_size] for t in self.tensors)
            return
        order = torch.randperm(n, generator=self.generator)
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            yield tuple(t[index] for t in self.tensors)


class LazyBatches:
    """Batches of lazily read rows through a torch DataLoader; each iteration is one epoch.

    Rows come in order, in a fresh order each epoch drawn from `generator`, or as the row lists of
    `batch_sampler`. With `num_workers` > 0 the workers persist across epochs (no re-fork per epoch);
    with `pin_memory` batches land in page-locked memory so the training step's non-blocking copies
    to CUDA overlap compute.
    """

    def __init__(
        self,
        rows: LazyRows,
        targets: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        batch_sampler: Sampler[list[int]] | None = None,
        positions: np.ndarray | None = None,
    ) -> None:
        self.dataset = rows.dataset(targets, positions)
        # Each epoch the DataLoader draws its workers' base seed (which seeds torch, random and numpy in
        # each worker) from `generator`; without one, from torch's global generator, shared by every trial thread.
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        if batch_sampler is None:
            order: Sampler[int] = (
                RandomSampler(self.dataset, generator=generator) if shuffle else SequentialSampler(self.dataset)
            )
            batch_sampler = BatchSampler(order, batch_size, drop_last=False)
        workers = rows.options.num_workers
        self.loader = DataLoader(
            self.dataset,
            batch_sampler=batch_sampler,
            num_workers=workers,
            pin_memory=rows.options.pin_memory,
            persistent_workers=workers > 0,
            prefetch_factor=2 if workers > 0 else None,
            worker_init_fn=_worker_init if workers > 0 else None,
            generator=generator,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        yield from self.loader


def _worker_init(worker_id: int) -> None:
    """Undo in a forked DataLoader worker what it inherits from the training process but must not run."""
    # The CLI's SIGTERM handler (stop_on_sigterm) would turn the SIGTERM the DataLoader sends a slow
    # worker at shutdown into an exception. Workers end as the DataLoader tells them; Ctrl-C is the main
    # process's to handle.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Prefect's queue services (events, logs) register thread-exit hooks in the training process. A forked
    # worker inherits the list but not the services' threads, so at its exit the hook fails (an
    # AssertionError in the service's drain), the worker ends with code 1, and the DataLoader prints
    # "worker exited unexpectedly with exit code 1" from `__del__` when the loader is collected. The
    # hooks belong to the parent's threads: a worker has none to drain. (CPython keeps the list in
    # threading._threading_atexits since 3.9; without it there is nothing to clear.)
    hooks = getattr(threading, "_threading_atexits", None)
    if isinstance(hooks, list):
        hooks.clear()


def to_dataset(x: np.ndarray, y: np.ndarray, task: Task | None = None) -> TensorDataset:
    """Float32 features and the task's targets (int64 labels without a task or for classification)."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    targets = torch.as_tensor(y, dtype=torch.int64) if task is None else task.targets_tensor(y)
    return TensorDataset(torch.as_tensor(x, dtype=torch.float32), targets)


def make_train_loader(
    x: Features,
    y: np.ndarray,
    hp: HyperParams,
    task: Task | int,
    seed: int,
    oversample_ratio: float = 1.0,
) -> TrainFeed:
    """Shuffled training batches of hp.batch_size under hp.rebalance; the same seed gives the same batches.

    `task` is the Task, or (for a classifier) its number of classes. Rebalancing needs classes: a task
    without them (regression) always gets plain shuffled batches; Stage 1 refuses a strategy set for it.

    - none: every row once per epoch, in a fresh order each epoch.
    - oversample: minority rows duplicated (once, up front) to `oversample_ratio` x the largest class.
    - balanced_batches: every batch holds about the same number of rows of each class.
    - class_weights: plain shuffled batches; the loss weights classes by inverse frequency.

    Lazily read rows (`LazyRows`) get the same strategies through a DataLoader (`LazyBatches`).
    """
    if isinstance(task, int):
        task = ClassificationTask([str(i) for i in range(task)])
    task = task.with_loss(hp.loss)  # a trial's own loss (space.loss); auto keeps the task's
    if isinstance(x, LazyRows):
        return _lazy_train_feed(x, y, hp, task, seed, oversample_ratio)
    num_classes = task.output_size
    tensors = to_dataset(x, y, task).tensors
    generator = torch.Generator().manual_seed(seed)
    if not isinstance(task, ClassificationTask):
        return TrainFeed(TensorBatches(tensors, hp.batch_size, shuffle=True, generator=generator), task=task)
    labels = np.asarray(y, dtype=np.int64)
    if hp.rebalance == "balanced_batches":
        sampler = balanced_sampler(labels, hp.batch_size, seed)
        return TrainFeed(TensorBatches(tensors, hp.batch_size, batch_sampler=sampler), task=task)
    if hp.rebalance == "oversample":
        indices = torch.as_tensor(oversample_indices(labels, oversample_ratio, np.random.default_rng(seed)))
        tensors = tuple(t[indices] for t in tensors)
    weights = None
    if hp.rebalance == "class_weights":
        weights = torch.as_tensor(inverse_frequency_weights(labels, num_classes), dtype=torch.float32)
    return TrainFeed(TensorBatches(tensors, hp.batch_size, shuffle=True, generator=generator), weights, task)


def _lazy_train_feed(x: LazyRows, y: np.ndarray, hp: HyperParams, task: Task, seed: int, ratio: float) -> TrainFeed:
    """`make_train_loader` for lazily read rows: the same strategies, by index and by batch sampler."""
    targets = task.targets_tensor(y)
    generator = torch.Generator().manual_seed(seed)
    if not isinstance(task, ClassificationTask):
        return TrainFeed(LazyBatches(x, targets, hp.batch_size, shuffle=True, generator=generator), task=task)
    labels = np.asarray(y, dtype=np.int64)
    if hp.rebalance == "balanced_batches":
        sampler = balanced_sampler(labels, hp.batch_size, seed)
        loader = LazyBatches(x, targets, hp.batch_size, generator=generator, batch_sampler=sampler)
        return TrainFeed(loader, task=task)
    positions = None
    if hp.rebalance == "oversample":  # duplicated row positions: nothing read until a batch needs it
        positions = oversample_indices(labels, ratio, np.random.default_rng(seed))
    weights = None
    if hp.rebalance == "class_weights":
        weights = torch.as_tensor(inverse_frequency_weights(labels, task.output_size), dtype=torch.float32)
    loader = LazyBatches(x, targets, hp.batch_size, shuffle=True, generator=generator, positions=positions)
    return TrainFeed(loader, weights, task)


def balanced_sampler(labels: np.ndarray, batch_size: int, seed: int) -> BalancedBatchSampler:
    """Batches holding about as many rows of each class; an InputError if a batch cannot hold every class."""
    classes = len(np.unique(labels))
    if batch_size < classes:
        raise InputError("batch_size", f"balanced_batches needs batch_size >= {classes} classes, got {batch_size}")
    return BalancedBatchSampler(labels, batch_size, seed)


def make_eval_loader(
    x: Features, y: np.ndarray, batch_size: int, task: Task | None = None
) -> "TensorBatches | LazyBatches":
    """Batches in row order, for evaluation (targets typed by `task`; int64 labels without one)."""
    if isinstance(x, LazyRows):
        targets = torch.as_tensor(y, dtype=torch.int64) if task is None else task.targets_tensor(y)
        return LazyBatches(x, targets, batch_size)
    return TensorBatches(to_dataset(x, y, task).tensors, batch_size)


def load_options(execution: ExecutionConfig) -> LoadOptions:
    """execution.num_workers DataLoader workers; pinned memory when training runs on CUDA."""
    from stagetune.training.device import resolve_device  # resolves "auto" the way training will

    cuda = resolve_device(execution.device).type == "cuda"
    return LoadOptions(num_workers=execution.num_workers, pin_memory=cuda)


def endless_batches(loader: Iterable[Batch]) -> Iterator[Batch]:
    """The loader's batches, epoch after epoch (each epoch reshuffled by the loader)."""
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("the loader yielded no batches")
