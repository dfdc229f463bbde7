"""Sampling arithmetic, class subsets, and what each rebalancing strategy makes an epoch see."""

import numpy as np
import pytest

from schemas.config import SampleConfig
from stagetune.data.rebalance import BalancedBatchSampler, inverse_frequency_weights, oversample_indices
from stagetune.data.sampling import allocate_per_class, rebalance_summary, sample_splits, stratified_subsample
from stagetune.errors import InputError

CLASS_NAMES = ("ant", "bee", "cow", "dog")


def splits(counts: list[int], n_features: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train rows with the given class counts and a validation split a quarter of the size; row i holds i."""
    y_train = np.repeat(np.arange(len(counts)), counts)
    y_val = np.repeat(np.arange(len(counts)), [max(1, c // 4) for c in counts])
    x_train = np.tile(np.arange(len(y_train), dtype=np.float32)[:, None], n_features)
    x_val = np.tile(-np.arange(1, len(y_val) + 1, dtype=np.float32)[:, None], n_features)
    return x_train, y_train, x_val, y_val


def sample(counts: list[int], **settings: object) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple]:
    x_train, y_train, x_val, y_val = splits(counts)
    cfg = SampleConfig.model_validate({"max_rows": None, **settings})
    s = sample_splits(x_train, y_train, x_val, y_val, CLASS_NAMES[: len(counts)], cfg, seed=0)
    return s.X_train, s.y_train, s.X_val, s.y_val, s.class_names


def test_allocation_is_proportional_within_one_row_and_exact_in_total() -> None:
    counts = np.array([523, 301, 97, 79])
    for n_target in (20, 99, 333, 500, 999):
        alloc = allocate_per_class(counts, n_target)
        assert alloc.sum() == n_target
        assert np.all(np.abs(alloc - counts * n_target / counts.sum()) < 1)
        assert np.all(alloc <= counts)
    assert allocate_per_class(counts, 5000).tolist() == counts.tolist()


def test_allocation_keeps_a_minimum_per_class_and_still_meets_the_target() -> None:
    counts = np.array([990, 9, 1])
    alloc = allocate_per_class(counts, 20)
    assert alloc.tolist() == [17, 2, 1]  # exact share ~[19.8, 0.2, 0.0]; minimum min(count, 2)
    assert allocate_per_class(np.array([50] * 10), 10).tolist() == [2] * 10  # minimums alone exceed the target


def test_subsample_draws_distinct_rows_of_the_right_classes_seeded() -> None:
    labels = np.repeat([0, 1], [80, 20])
    picked = stratified_subsample(labels, 25, np.random.default_rng(0))
    assert len(np.unique(picked)) == 25
    assert np.bincount(labels[picked]).tolist() == [20, 5]
    assert np.array_equal(picked, stratified_subsample(labels, 25, np.random.default_rng(0)))
    assert not np.array_equal(picked, stratified_subsample(labels, 25, np.random.default_rng(1)))


def test_fraction_and_cap_keep_class_shares_and_rows_intact() -> None:
    counts = [600, 300, 80, 20]
    x, y, x_val, y_val, names = sample(counts, fraction=0.5)
    assert len(y) == 500
    assert np.all(np.abs(np.bincount(y) - np.array(counts) * 0.5) <= 1)
    assert names == CLASS_NAMES
    # Rows travel with their labels: row i of the training split held the value i.
    _, y_full, _, _ = splits(counts)
    np.testing.assert_array_equal(y, y_full[x[:, 0].astype(int)])
    assert len(np.unique(x[:, 0])) == len(y)
    # Validation keeps the same share of its rows, stratified too.
    assert len(y_val) == 125
    assert np.all(np.abs(np.bincount(y_val) - np.array(counts) // 4 * 0.5) <= 1)
    assert (x_val < 0).all()

    _, y_capped, _, y_val_capped, _ = sample(counts, fraction=0.5, max_rows=100)
    assert len(y_capped) == 100
    assert np.all(np.abs(np.bincount(y_capped) - np.array(counts) * 0.1) <= 1)
    assert len(y_val_capped) == 25


def test_a_tiny_sample_keeps_every_class() -> None:
    _, y, _, y_val, _ = sample([2000, 10, 4, 2], max_rows=20)
    assert np.bincount(y).tolist() == [14, 2, 2, 2]
    assert np.bincount(y_val, minlength=4).min() >= 1


def test_class_subset_filters_and_relabels_from_zero() -> None:
    counts = [40, 40, 40, 40]
    x, y, _, y_val, names = sample(counts, classes=["dog", "bee"])
    assert names == ("bee", "dog")
    assert np.bincount(y).tolist() == [40, 40]
    _, y_full, _, _ = splits(counts)
    original = y_full[x[:, 0].astype(int)]
    assert set(original[y == 0]) == {1}
    assert set(original[y == 1]) == {3}
    assert np.bincount(y_val).tolist() == [10, 10]


@pytest.mark.parametrize(
    ("classes", "words"), [(["bee", "yak"], ["'yak'", "'ant', 'bee', 'cow', 'dog'"]), (["bee", "bee"], ["two"])]
)
def test_bad_class_subset_names_the_valid_labels(classes: list[str], words: list[str]) -> None:
    with pytest.raises(InputError) as caught:
        sample([10, 10, 10, 10], classes=classes)
    assert caught.value.field == "sample.classes"
    assert all(word in caught.value.message for word in words)


def test_oversample_brings_minorities_to_the_ratio_of_the_majority() -> None:
    labels = np.repeat([0, 1, 2], [100, 30, 5])
    rows = oversample_indices(labels, 0.5, np.random.default_rng(0))
    assert np.bincount(labels[rows]).tolist() == [100, 50, 50]
    assert set(np.unique(rows)) == set(range(len(labels)))  # every original row kept
    summary = rebalance_summary(labels, 3, "oversample", 0.5, batch_size=32, seed=0)
    assert summary.epoch_class_counts.tolist() == [100, 50, 50]
    assert summary.class_weights is None


def test_class_weights_balance_the_total_weight_of_each_class() -> None:
    labels = np.repeat([0, 1, 2], [60, 30, 10])
    weights = inverse_frequency_weights(labels, 3)
    np.testing.assert_allclose(weights, [100 / 180, 100 / 90, 100 / 30])
    np.testing.assert_allclose(weights * np.bincount(labels), 100 / 3)
    summary = rebalance_summary(labels, 3, "class_weights", 1.0, batch_size=32, seed=0)
    assert summary.class_weights is not None
    np.testing.assert_allclose(summary.class_weights, weights)
    assert summary.epoch_class_counts.tolist() == [60, 30, 10]
    assert rebalance_summary(labels, 3, "none", 1.0, 32, 0).epoch_class_counts.tolist() == [60, 30, 10]


def test_balanced_batches_are_balanced_and_an_epoch_keeps_its_length() -> None:
    labels = np.repeat([0, 1, 2], [200, 40, 10])
    sampler = BalancedBatchSampler(labels, batch_size=32, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 8  # ceil(250 / 32), as a plain epoch
    for batch in batches:
        per_class = np.bincount(labels[batch], minlength=3)
        assert len(batch) == 32
        assert per_class.max() - per_class.min() <= 1
    summary = rebalance_summary(labels, 3, "balanced_batches", 1.0, batch_size=32, seed=0)
    assert summary.epoch_class_counts.tolist() == [85, 85, 85]  # 8 * 32 / 3 each
    seen = np.bincount(labels[np.concatenate(batches)], minlength=3)
    assert np.all(np.abs(seen - 8 * 32 / 3) <= 8)


def test_balanced_batches_smaller_than_the_class_count_are_refused() -> None:
    with pytest.raises(InputError) as caught:
        rebalance_summary(np.arange(8) % 4, 4, "balanced_batches", 1.0, batch_size=2, seed=0)
    assert caught.value.field == "model.baseline.batch_size"
    assert "at least 4" in caught.value.message
