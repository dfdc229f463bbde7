"""Stratified train/validation/test split, then imputation, one-hot encoding and scaling fitted on train only."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from schemas.config import DataConfig
from stagetune.data.cleaning import MIN_ROWS_PER_CLASS
from stagetune.data.loading import RawTable
from stagetune.task.registry import TASKS


@dataclass(frozen=True)
class PreparedData:
    """The three splits as float32 features and int64 labels, and how they were made."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    train_index: np.ndarray
    """Rows of the `RawTable` in each split (sorted)."""
    val_index: np.ndarray
    test_index: np.ndarray
    feature_names: tuple[str, ...]
    """Names of the output columns: numeric columns, then one column per category ("colour_red")."""
    transformer: Any
    """The fitted sklearn ColumnTransformer ("num": impute + scale, "cat": impute + one-hot)."""


def prepare(table: RawTable, cfg: DataConfig, seed: int) -> PreparedData:
    """Split `table` (stratified, seeded) and transform every split with statistics of the training split."""
    # Split by the task's strata: the classes, or quantile bins of a regression target.
    strata = TASKS[table.task].strata(table.labels)
    train, val, test = stratified_split(strata, cfg.val_fraction, cfg.test_fraction, seed)
    transformer = build_transformer(table.numeric_columns, table.categorical_columns)
    features = table.features
    transformer.fit(features.iloc[train])

    def transform(rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(transformer.transform(features.iloc[rows]), dtype=np.float32)

    return PreparedData(
        X_train=transform(train),
        y_train=table.labels[train],
        X_val=transform(val),
        y_val=table.labels[val],
        X_test=transform(test),
        y_test=table.labels[test],
        train_index=train,
        val_index=val,
        test_index=test,
        feature_names=tuple(str(n) for n in transformer.get_feature_names_out()),
        transformer=transformer,
    )


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices (sorted) of train, validation and test, split class by class.

    Each class gives round(n * fraction) rows to validation and to test, but never fewer than one row
    to any split, so every class is seen in all three; a class needs `MIN_ROWS_PER_CLASS` rows.
    """
    rng = np.random.default_rng([seed, 0])
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n = len(members)
        if n < MIN_ROWS_PER_CLASS:
            raise ValueError(f"class {label} has {n} rows; a three-way split needs {MIN_ROWS_PER_CLASS}")
        n_test = min(max(1, round(n * test_fraction)), n - 2)
        n_val = min(max(1, round(n * val_fraction)), n - n_test - 1)
        parts[0].append(members[n_test + n_val :])
        parts[1].append(members[n_test : n_test + n_val])
        parts[2].append(members[:n_test])
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    return train, val, test


def build_transformer(numeric: Sequence[str], categorical: Sequence[str]) -> ColumnTransformer:
    """Median imputation + standardisation for numeric columns; most-frequent imputation + one-hot for the rest.

    Categories first seen at validation or test time encode as all zeros. Columns that are all missing
    in the training split are kept (as zeros) so the output width does not depend on the split.
    """
    steps = []
    if numeric:
        scale = Pipeline(
            [
                ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                ("scale", StandardScaler()),
            ]
        )
        steps.append(("num", scale, list(numeric)))
    if categorical:
        encode = Pipeline(
            [
                ("impute", SimpleImputer(strategy="most_frequent", keep_empty_features=True)),
                ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
            ]
        )
        steps.append(("cat", encode, list(categorical)))
    return ColumnTransformer(steps, remainder="drop", sparse_threshold=0.0, verbose_feature_names_out=False)
