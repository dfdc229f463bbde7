"""Preprocessing: stratified seeded splits, and statistics fitted on the training split only."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from schemas.config import DataConfig
from stagetune.data.loading import RawTable, load_table
from stagetune.data.preprocess import prepare, stratified_split


def table_from(frame: pd.DataFrame, tmp_path: Path, **data: object) -> tuple[RawTable, DataConfig]:
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    cfg = DataConfig.model_validate({"source": str(path), "target": "label", **data})
    return load_table(cfg, seed=0), cfg


def drifting_frame(n: int = 200) -> pd.DataFrame:
    """Numeric values that grow with the row number, so any subset's mean differs from the whole's."""
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "grow": np.arange(n, dtype=float) ** 2,
            "noise": rng.normal(size=n),
            "label": rng.choice(["a", "b", "c"], n, p=[0.6, 0.3, 0.1]),
        }
    )


def test_split_is_stratified_sized_disjoint_and_seeded() -> None:
    labels = np.repeat(np.arange(3), [700, 250, 50])
    train, val, test = stratified_split(labels, val_fraction=0.2, test_fraction=0.1, seed=5)
    assert len(np.intersect1d(train, val)) == len(np.intersect1d(train, test)) == len(np.intersect1d(val, test)) == 0
    assert len(train) + len(val) + len(test) == len(labels)
    assert np.bincount(labels[val]).tolist() == [140, 50, 10]
    assert np.bincount(labels[test]).tolist() == [70, 25, 5]
    assert np.bincount(labels[train]).tolist() == [490, 175, 35]
    again = stratified_split(labels, 0.2, 0.1, seed=5)
    other = stratified_split(labels, 0.2, 0.1, seed=6)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    assert not np.array_equal(test, other[2])


def test_split_gives_every_split_a_row_of_a_three_row_class() -> None:
    labels = np.array([0] * 40 + [1] * 3)
    for part in stratified_split(labels, val_fraction=0.1, test_fraction=0.1, seed=0):
        assert (labels[part] == 1).sum() == 1


def test_scaler_is_fitted_on_the_training_split_only(tmp_path: Path) -> None:
    frame = drifting_frame()
    table, cfg = table_from(frame, tmp_path)
    prepared = prepare(table, cfg, seed=0)
    raw = table.features[["grow", "noise"]].to_numpy()
    scaler = prepared.transformer.named_transformers_["num"]["scale"]
    train_mean, train_std = raw[prepared.train_index].mean(axis=0), raw[prepared.train_index].std(axis=0)
    np.testing.assert_allclose(scaler.mean_, train_mean)
    assert not np.allclose(scaler.mean_, raw.mean(axis=0))
    # Validation and test rows are scaled with the training statistics, not their own.
    for x, rows in ((prepared.X_val, prepared.val_index), (prepared.X_test, prepared.test_index)):
        np.testing.assert_allclose(x, (raw[rows] - train_mean) / train_std, rtol=1e-5, atol=1e-5)
        assert not np.allclose(x.mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(prepared.X_train.mean(axis=0), 0, atol=1e-5)


def test_imputation_uses_training_medians_and_modes(tmp_path: Path) -> None:
    frame = drifting_frame().assign(colour=np.resize(["red", "red", "blue", "green"], 200).astype(object))
    frame.loc[::7, "grow"] = np.nan
    frame.loc[::5, "colour"] = None
    table, cfg = table_from(frame, tmp_path)
    _, val, test = stratified_split(table.labels, cfg.val_fraction, cfg.test_fraction, seed=0)
    # Held-out rows that would pull the median up and make "blue" the mode, were they used.
    held_out = np.concatenate([val, test])
    table.features.loc[held_out, "grow"] = 1e6
    table.features.loc[held_out, "colour"] = "blue"
    prepared = prepare(table, cfg, seed=0)
    train = table.features.iloc[prepared.train_index]
    imputers = prepared.transformer.named_transformers_
    assert imputers["num"]["impute"].statistics_[0] == pytest.approx(train["grow"].median())
    assert table.features["grow"].median() > train["grow"].median()
    assert imputers["cat"]["impute"].statistics_[0] == train["colour"].mode()[0] == "red"
    assert table.features["colour"].mode()[0] == "blue"
    assert not np.isnan(prepared.X_val).any()
    assert not np.isnan(prepared.X_test).any()


def test_one_hot_columns_and_unseen_categories_encode_as_zeros(tmp_path: Path) -> None:
    frame = drifting_frame(60).assign(colour=np.resize(["red", "blue"], 60).astype(object))
    table, cfg = table_from(frame, tmp_path)
    _, val, _ = stratified_split(table.labels, cfg.val_fraction, cfg.test_fraction, seed=0)
    table.features.loc[val[0], "colour"] = "purple"  # a category the training split never shows
    prepared = prepare(table, cfg, seed=0)
    assert prepared.feature_names == ("grow", "noise", "colour_blue", "colour_red")
    one_hot = prepared.X_val[:, 2:]
    assert one_hot[0].tolist() == [0.0, 0.0]
    assert (one_hot[1:].sum(axis=1) == 1).all()
    assert set(np.unique(prepared.X_train[:, 2:])) == {0.0, 1.0}


def test_outputs_are_float32_features_and_int64_labels(tmp_path: Path) -> None:
    table, cfg = table_from(drifting_frame(), tmp_path)
    prepared = prepare(table, cfg, seed=0)
    for x, y, rows in (
        (prepared.X_train, prepared.y_train, prepared.train_index),
        (prepared.X_val, prepared.y_val, prepared.val_index),
        (prepared.X_test, prepared.y_test, prepared.test_index),
    ):
        assert x.dtype == np.float32
        assert y.dtype == np.int64
        assert x.shape == (len(rows), 2)
        np.testing.assert_array_equal(y, table.labels[rows])
    assert set(np.unique(prepared.y_train)) == {0, 1, 2}
