"""The target column(s): which task they make (data.task auto), and regression targets as checked floats."""

from collections.abc import Sequence

import numpy as np
import pandas as pd

from stagetune.errors import InputError

MAX_CLASSES_FOR_AUTO = 20
"""An integer target with at most this many distinct values is taken for class labels (data.task auto)."""


def detect_task(frame: pd.DataFrame, targets: Sequence[str], configured: str) -> tuple[str, str]:
    """(task, reason) for `data.task`: the configured one, or what the target column(s) look like.

    auto: non-numeric, boolean, or integer targets with at most MAX_CLASSES_FOR_AUTO distinct values are
    classification; float targets and integers with more distinct values are regression; several
    target columns are a multi-output regression.
    """
    if configured != "auto":
        return configured, "set in data.task"
    if len(targets) > 1:
        return "regression", f"{len(targets)} target columns (multi-output regression)"
    column = frame[targets[0]].dropna()
    name = targets[0]
    if pd.api.types.is_bool_dtype(column):
        return "classification", f"target {name!r} is boolean"
    if not pd.api.types.is_numeric_dtype(column):
        return "classification", f"target {name!r} is non-numeric"
    values = column.to_numpy(dtype=np.float64)
    distinct = len(np.unique(values))
    integral = bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))
    if integral and distinct <= MAX_CLASSES_FOR_AUTO:
        return (
            "classification",
            f"target {name!r} is integer with {distinct} distinct values, at most {MAX_CLASSES_FOR_AUTO}",
        )
    if integral:
        return (
            "regression",
            f"target {name!r} is integer with {distinct} distinct values, more than {MAX_CLASSES_FOR_AUTO}",
        )
    return "regression", f"target {name!r} holds non-integer numbers"


def regression_targets(frame: pd.DataFrame, targets: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The target columns as float64 (n, k) and the rows to keep (every target present).

    Raises `InputError` on data.target for text in a target column, infinite values, or a target that is
    constant (or has a single row) once rows without a target are dropped: a regressor needs it to vary.
    """
    columns = []
    for name in targets:
        raw = frame[name]
        if pd.api.types.is_bool_dtype(raw):
            raise InputError("data.target", f"column {name!r} is boolean, not a quantity: set data.task classification")
        parsed = pd.to_numeric(raw, errors="coerce")
        garbage = parsed.isna() & raw.notna()
        if garbage.any():
            bad = raw[garbage].astype(str).unique()[:3].tolist()
            raise InputError(
                "data.target",
                f"column {name!r} holds non-numeric value(s) {bad}, so it cannot be a regression target: "
                "fix those values, point data.target at a numeric column, or set data.task classification",
            )
        values = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isinf(values).any():
            raise InputError("data.target", f"column {name!r} holds infinite values: fix or remove those rows")
        columns.append(values)
    y = np.stack(columns, axis=1)
    keep = ~np.isnan(y).any(axis=1)
    if keep.sum() < 2:
        raise InputError(
            "data.target", f"{_names(targets)} has fewer than 2 rows with a value: name the target column(s)"
        )
    for index, name in enumerate(targets):
        if np.ptp(y[keep, index]) == 0:
            raise InputError(
                "data.target",
                f"column {name!r} is constant ({y[keep, index][0]!r} in every row with a value): there is nothing "
                "to regress; point data.target at a column that varies",
            )
    return y, keep


def _names(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)
