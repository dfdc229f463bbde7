"""The reduced problem the search tunes on: a stratified subsample, optionally of a few classes only.

Rebalancing is a tunable hyperparameter, so it is not baked into the arrays; `rebalance_summary`
only works out what the configured strategy will make one training epoch see.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from schemas.config import SampleConfig
from schemas.hyperparams import RebalanceStrategy
from stagetune.data.rebalance import class_counts, inverse_frequency_weights, oversample_indices
from stagetune.errors import InputError

MIN_ROWS_PER_CLASS_SAMPLED = 2
"""A subsample keeps min(rows of the class, this) rows of every class, whatever the fraction or cap."""


@dataclass(frozen=True)
class SampledData:
    """The sampled training and validation splits, labels renumbered 0..K-1 over `class_names`."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class RebalanceSummary:
    """What one training epoch sees under a rebalancing strategy."""

    epoch_class_counts: np.ndarray
    """Rows (or expected rows, for balanced batches) of each class in one epoch."""
    class_weights: np.ndarray | None
    """Loss weights for the class_weights strategy, else None."""


def sample_splits(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    class_names: Sequence[str],
    cfg: SampleConfig,
    seed: int,
) -> SampledData:
    """Keep `cfg.classes` (all if unset), then a stratified `cfg.fraction` of training rows, at most `cfg.max_rows`.

    The validation split keeps the same classes and the same share of its rows, so validation during the
    search stays fast and drawn like the training rows.
    """
    kept = select_classes(class_names, cfg.classes)
    relabel = np.full(len(class_names), -1, dtype=np.int64)
    relabel[kept] = np.arange(len(kept))
    train_rows = np.flatnonzero(relabel[y_train] >= 0)
    val_rows = np.flatnonzero(relabel[y_val] >= 0)

    n_target = round(cfg.fraction * len(train_rows))
    if cfg.max_rows is not None:
        n_target = min(n_target, cfg.max_rows)
    rng = np.random.default_rng([seed, 1])
    train_pick = train_rows[stratified_subsample(y_train[train_rows], n_target, rng)]
    val_share = len(train_pick) / len(train_rows)
    val_pick = val_rows[stratified_subsample(y_val[val_rows], round(val_share * len(val_rows)), rng)]
    return SampledData(
        X_train=x_train[train_pick],
        y_train=relabel[y_train[train_pick]],
        X_val=x_val[val_pick],
        y_val=relabel[y_val[val_pick]],
        class_names=tuple(class_names[i] for i in kept),
    )


def sample_regression_splits(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    strata_train: np.ndarray,
    strata_val: np.ndarray,
    cfg: SampleConfig,
    seed: int,
) -> SampledData:
    """`sample_splits` for targets without classes: stratified by the given strata (quantile bins of the target)."""
    n_target = round(cfg.fraction * len(y_train))
    if cfg.max_rows is not None:
        n_target = min(n_target, cfg.max_rows)
    rng = np.random.default_rng([seed, 1])
    train_pick = stratified_subsample(strata_train, n_target, rng)
    val_share = len(train_pick) / len(y_train)
    val_pick = stratified_subsample(strata_val, round(val_share * len(y_val)), rng)
    return SampledData(x_train[train_pick], y_train[train_pick], x_val[val_pick], y_val[val_pick], ())


def select_classes(class_names: Sequence[str], wanted: Sequence[str] | None) -> np.ndarray:
    """Codes of the classes to keep, in the order of `class_names`; all of them when `wanted` is None."""
    if wanted is None:
        return np.arange(len(class_names))
    unknown = [w for w in wanted if w not in class_names]
    if unknown:
        valid = ", ".join(repr(n) for n in class_names)
        raise InputError("sample.classes", f"unknown label(s) {unknown}: use labels among {valid}")
    if len(set(wanted)) < 2:
        raise InputError("sample.classes", f"{list(wanted)} names fewer than two distinct classes: name at least two")
    return np.array([i for i, name in enumerate(class_names) if name in wanted], dtype=np.int64)


def allocate_per_class(
    counts: np.ndarray, n_target: int, min_per_class: int = MIN_ROWS_PER_CLASS_SAMPLED
) -> np.ndarray:
    """Rows to draw from each class: proportional to `counts`, summing to `n_target` where the minimum allows.

    Largest-remainder rounding keeps every class within one row of its exact share. Each class gets at
    least min(count, `min_per_class`) rows; the rows that costs come back from the classes with the most
    rows above their minimum, so the total exceeds `n_target` only if the minimums alone do.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if n_target >= total:
        return counts.copy()
    exact = counts * (n_target / total)
    alloc = np.floor(exact).astype(np.int64)
    shortfall = n_target - int(alloc.sum())
    alloc[np.argsort(alloc - exact, kind="stable")[:shortfall]] += 1
    floor = np.minimum(counts, min_per_class)
    alloc = np.maximum(alloc, floor)
    for _ in range(int(alloc.sum()) - n_target):
        spare = alloc - floor
        if spare.max() <= 0:
            break
        alloc[np.argmax(spare)] -= 1
    return alloc


def stratified_subsample(
    labels: np.ndarray, n_target: int, rng: np.random.Generator, min_per_class: int = MIN_ROWS_PER_CLASS_SAMPLED
) -> np.ndarray:
    """Sorted positions of about `n_target` rows, drawn without replacement per class (see `allocate_per_class`)."""
    classes, counts = np.unique(labels, return_counts=True)
    alloc = allocate_per_class(counts, n_target, min_per_class)
    picks = [
        rng.choice(np.flatnonzero(labels == c), size=int(k), replace=False) for c, k in zip(classes, alloc, strict=True)
    ]
    return np.sort(np.concatenate(picks)) if picks else np.empty(0, dtype=np.int64)


def rebalance_summary(
    labels: np.ndarray,
    num_classes: int,
    strategy: RebalanceStrategy,
    oversample_ratio: float,
    batch_size: int,
    seed: int,
) -> RebalanceSummary:
    """Per-class rows one epoch sees under `strategy`, and the loss weights for class_weights.

    oversample: the counts after duplicating minorities to `oversample_ratio` x the largest class;
    balanced_batches: ceil(n / batch_size) batches of `batch_size` rows split evenly, n_batches * batch_size / K
    each (rounded); none and class_weights: the counts as they are.
    """
    counts = class_counts(labels, num_classes)
    if strategy == "oversample":
        rows = oversample_indices(labels, oversample_ratio, np.random.default_rng([seed, 2]))
        return RebalanceSummary(class_counts(labels[rows], num_classes), None)
    if strategy == "balanced_batches":
        if batch_size < num_classes:
            raise InputError(
                "model.baseline.batch_size",
                f"balanced batches of {batch_size} rows cannot hold all {num_classes} classes: "
                f"use a batch size of at least {num_classes} or another sample.rebalance",
            )
        n_batches = -(-len(labels) // batch_size)
        per_class = round(n_batches * batch_size / num_classes)
        return RebalanceSummary(np.full(num_classes, per_class, dtype=np.int64), None)
    if strategy == "class_weights":
        return RebalanceSummary(counts, inverse_frequency_weights(labels, num_classes))
    return RebalanceSummary(counts, None)
