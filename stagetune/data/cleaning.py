"""Checks and clean-ups of a table as read: which columns to use, how to type them, what to drop.

Every problem a user can fix raises `InputError` naming the config field, the value and the fix;
problems stagetune can fix itself (missing labels, useless columns, infinities) are fixed and
described in a warning line.
"""

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from stagetune.errors import InputError

MIN_ROWS_PER_CLASS = 3
"""One row each for train, validation and test: the least a stratified three-way split needs."""

# An object column whose values are numbers this often is a numeric column with typos in it.
_NUMERIC_SHARE_FOR_GARBAGE = 0.9
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_LARGEST_EXACT_INTEGER = 2.0**53  # beyond it a float label no longer names one integer (and 1e308 overflows int64)

ColumnKind = Literal["numeric", "categorical"]
# Cell values no feature encoding takes: what Parquet list, map and struct columns read as.
_NESTED = (list, tuple, dict, set, frozenset, np.ndarray)
_KIND_NAMES = {np.ndarray: "list", tuple: "list", dict: "mapping", frozenset: "set"}


def resolve_columns(
    frame: pd.DataFrame, target: str | Sequence[str], features: Sequence[str] | None, categorical: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    """Check the configured column names against `frame`; return (numeric, categorical) feature columns.

    `target` is the target column, or the list of them (multi-output regression).

    Without `categorical`, bool, category and text columns are categorical, the rest numeric. With it,
    every feature column not listed there is declared numeric.
    """
    available = [str(c) for c in frame.columns]
    targets = [target] if isinstance(target, str) else list(target)
    for name in targets:
        if name not in available:
            raise InputError("data.target", f"column {name!r} is not in the table: use one of {_names(available)}")
    target = targets[0] if len(targets) == 1 else ", ".join(targets)
    if features is None:
        features = [c for c in available if c not in targets]
    else:
        missing = [c for c in features if c not in available]
        if missing:
            raise InputError(
                "data.features", f"column(s) {_names(missing)} are not in the table: use some of {_names(available)}"
            )
        listed = [c for c in targets if c in features]
        if listed:
            raise InputError("data.features", f"it lists the target column(s) {_names(listed)}: remove them")
    if not features:
        raise InputError("data.features", f"the table has no column besides the target {target!r}: add feature columns")
    if categorical is not None:
        unknown = [c for c in categorical if c not in features]
        if unknown:
            raise InputError(
                "data.categorical",
                f"column(s) {_names(unknown)} are not feature columns: use some of {_names(features)}",
            )
        return [c for c in features if c not in categorical], [c for c in features if c in categorical]
    kinds = {c: infer_column_kind(frame[c], c) for c in features}
    return [c for c in features if kinds[c] == "numeric"], [c for c in features if kinds[c] == "categorical"]


def without_unencodable_columns(
    frame: pd.DataFrame, targets: Sequence[str], features: Sequence[str] | None
) -> tuple[pd.DataFrame, list[str]]:
    """`frame` without the columns holding lists, arrays, mappings or sets (Parquet list/map/struct
    columns), which nothing downstream can encode or even hash; and the names of those left out.

    Such a column the run would use (a target, a listed feature, or any column when data.features
    is unset) is refused with an `InputError` naming it; one data.features leaves out is dropped.
    """
    nested: dict[str, str] = {}
    for name in frame.columns[[dtype.kind == "O" for dtype in frame.dtypes]]:
        kinds = {_KIND_NAMES.get(type(v), type(v).__name__) for v in frame[name].dropna() if isinstance(v, _NESTED)}
        if kinds:
            nested[str(name)] = "/".join(sorted(kinds))
    used = [n for n in nested if n in targets or features is None or n in features]
    if used:
        name = used[0]
        field = "data.target" if name in targets else "data.features"
        leave_out = "pick another data.target" if name in targets else "list the other columns in data.features"
        raise InputError(
            field,
            f"column {name!r} holds {nested[name]} values, not numbers or text, which the loader cannot encode: "
            f"flatten it into scalar columns, or leave it out ({leave_out})",
        )
    return frame.drop(columns=list(nested)), list(nested)


def infer_column_kind(column: pd.Series, name: str) -> ColumnKind:
    """Numeric for number columns and text columns holding only numbers; categorical otherwise.

    A text column whose values are nearly all numbers is taken as a typo, not as categories.
    """
    if pd.api.types.is_bool_dtype(column):
        return "categorical"
    if pd.api.types.is_numeric_dtype(column):
        return "numeric"
    if isinstance(column.dtype, pd.CategoricalDtype) or pd.api.types.is_datetime64_any_dtype(column):
        return "categorical"
    present = column.notna()
    if not present.any():
        return "numeric"
    parsed = pd.to_numeric(column, errors="coerce").notna()
    share = float(parsed[present].mean())
    if share == 1.0:
        return "numeric"
    if share >= _NUMERIC_SHARE_FOR_GARBAGE:
        raise _garbage_error(column, parsed, name, "is mostly numbers")
    return "categorical"


def numeric_values(column: pd.Series, name: str) -> tuple[np.ndarray, int]:
    """The column as float64 with infinite and beyond-float32 values made missing; and how many there were."""
    parsed = pd.to_numeric(column, errors="coerce")
    garbage = parsed.isna() & column.notna()
    if garbage.any():
        raise _garbage_error(column, ~garbage, name, "is declared numeric (not in data.categorical)")
    values = parsed.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    with np.errstate(invalid="ignore"):
        out_of_range = ~np.isnan(values) & ~(np.abs(values) <= _FLOAT32_MAX)
    values[out_of_range] = np.nan
    return values, int(out_of_range.sum())


def categorical_values(column: pd.Series) -> np.ndarray:
    """The column as an object array of strings, NaN where missing (what the imputer expects)."""
    present = column.notna().to_numpy()
    values = np.full(len(column), np.nan, dtype=object)
    values[present] = column[present].astype(str).to_numpy(dtype=object)
    return values


def clean_features(
    frame: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str], drop_constant: bool
) -> tuple[pd.DataFrame, list[str], list[str], list[str], list[str]]:
    """Typed feature columns with useless ones removed.

    Returns (features, numeric kept, categorical kept, dropped columns, warning lines). Columns with
    at most one distinct non-missing value carry no information and are dropped when `drop_constant`
    (image data keeps every pixel so the image shape stays whole).
    """
    columns: dict[str, np.ndarray] = {}
    replaced: dict[str, int] = {}
    for name in numeric:
        columns[name], n_bad = numeric_values(frame[name], name)
        if n_bad:
            replaced[name] = n_bad
    for name in categorical:
        columns[name] = categorical_values(frame[name])
    dropped = [n for n in columns if drop_constant and pd.Series(columns[n]).nunique(dropna=True) <= 1]
    warnings = []
    if replaced:
        warnings.append(
            f"treated {sum(replaced.values())} infinite or out-of-float32-range value(s) as missing "
            f"in column(s) {_names(list(replaced))}"
        )
    if dropped:
        warnings.append(f"dropped constant or all-missing feature column(s) {_names(dropped)}")
    kept_numeric = [n for n in numeric if n not in dropped]
    kept_categorical = [n for n in categorical if n not in dropped]
    if not kept_numeric and not kept_categorical:
        replaced_note = f" once {sum(replaced.values())} infinite or huge value(s) count as missing" if replaced else ""
        raise InputError(
            "data.features",
            f"every feature column ({_names(list(columns))}) is constant or all missing{replaced_note}: "
            "use columns that vary",
        )
    kept = {n: columns[n] for n in [*kept_numeric, *kept_categorical]}
    return pd.DataFrame(kept, index=frame.index), kept_numeric, kept_categorical, dropped, warnings


def encode_labels(column: pd.Series, target: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Label codes 0..C-1 in the order of the sorted class names, the names, and the rows kept.

    Rows with a missing label are not kept. Integer labels sort numerically ("2" before "10"),
    any other labels as strings. Fails unless there are two classes of at least
    `MIN_ROWS_PER_CLASS` rows each.
    """
    keep = column.notna().to_numpy()
    if not keep.any():
        raise InputError("data.target", f"every value of column {target!r} is missing: name the label column")
    labels = column[keep]
    if pd.api.types.is_numeric_dtype(labels) and not pd.api.types.is_bool_dtype(labels):
        as_float = labels.to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(as_float)) or not np.all(as_float == np.round(as_float)):
            example = next(v for v in as_float if not np.isfinite(v) or v != round(v))
            raise InputError(
                "data.target",
                f"column {target!r} holds non-integer numbers such as {example!r}, which are not class labels: "
                "set data.task regression (or auto) to predict the number, or point data.target at a label column",
            )
        if not np.all(np.abs(as_float) <= _LARGEST_EXACT_INTEGER):
            example = next(v for v in as_float if abs(v) > _LARGEST_EXACT_INTEGER)
            raise InputError(
                "data.target",
                f"column {target!r} holds numbers too large to be class labels, such as {example!r}: "
                "point data.target at a column of class labels, or fix those values",
            )
        labels = pd.Series(as_float.astype(np.int64), index=labels.index)
    uniques = sorted(labels.unique().tolist()) if labels.dtype == np.int64 else sorted(labels.astype(str).unique())
    class_names = [str(u) for u in uniques]
    codes = pd.Categorical(labels.astype(str), categories=class_names).codes.astype(np.int64)
    _check_class_counts(codes, class_names, target)
    return codes, class_names, keep


def _check_class_counts(codes: np.ndarray, class_names: list[str], target: str) -> None:
    if len(class_names) < 2:
        raise InputError(
            "data.target",
            f"column {target!r} holds a single class {class_names[0]!r}: a classifier needs at least two classes",
        )
    counts = np.bincount(codes, minlength=len(class_names))
    small = {name: int(n) for name, n in zip(class_names, counts, strict=True) if n < MIN_ROWS_PER_CLASS}
    if small:
        raise InputError(
            "data.target",
            f"class(es) with rows {small} have fewer than {MIN_ROWS_PER_CLASS} rows, the least a stratified "
            "train/validation/test split needs: add rows of those classes or remove them from the data",
        )


def _garbage_error(column: pd.Series, parsed: pd.Series, name: str, why: str) -> InputError:
    bad = column[column.notna() & ~parsed].astype(str).unique()[:3].tolist()
    return InputError(
        "data.features",
        f"column {name!r} {why} but holds non-numeric value(s) {bad}: "
        f"fix those values, or list {name!r} in data.categorical to treat it as categories",
    )


def _names(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
