"""Fitted preprocessing as plain data, applied to raw rows exactly as Stage 1 applied it in training.

Stage 1 fits a scikit-learn ColumnTransformer on the training split (`data.preprocess`). A served model
gets rows as they come in the user's data, so the serving side needs the same two steps in order:
the loader's cleaning (numbers parsed, infinities made missing, categories turned into text as the
loader did) and the fitted transform (median imputation + standardisation; mode imputation + one-hot,
unseen categories as all zeros). The fitted statistics are stored as JSON, not pickled, so a model
artifact holds no code. Each kind of input is one `Preprocessor` class, picked by `KIND` in its state
(tables today; an image preprocessor that resizes and normalises is one more class in `_KINDS`).
"""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import pandas as pd

_FLOAT32_MAX = float(np.finfo(np.float32).max)
SCHEMA_TYPES = {"i": "any", "u": "any", "f": "any", "b": "any", "O": "string"}
"""MLflow column types per raw numpy dtype kind. Numbers are "any": MLflow refuses int64 for a double
column and floats (what a missing value makes of an integer column) for a long one, while training
took both; `transform` checks them itself and names a column holding anything but numbers."""


class ServingInputError(ValueError):
    """Rows a served model cannot take: a column missing or holding values of the wrong kind."""


class Preprocessor(Protocol):
    """Raw inputs in, the float32 matrix the network was trained on out."""

    def transform(self, rows: pd.DataFrame) -> np.ndarray: ...

    def to_state(self) -> dict[str, Any]: ...

    def schema_columns(self) -> list[tuple[str, str]]: ...


@dataclass(frozen=True)
class TablePreprocessor:
    """Cleaning + imputation + scaling + one-hot for a table, from statistics fitted on the training split."""

    KIND: ClassVar[str] = "table"
    numeric: list[str]
    numeric_fill: list[float]
    numeric_mean: list[float]
    numeric_scale: list[float]
    categorical: list[str]
    categorical_fill: list[str]
    categories: list[list[str]]
    raw_kinds: dict[str, str]
    """numpy dtype kind of each column as the loader read it ("O" text, "i" integers, "f" floats, "b" bools)."""

    def transform(self, rows: pd.DataFrame) -> np.ndarray:
        """The model's input matrix for `rows` (extra columns ignored); ServingInputError names a bad column."""
        missing = [name for name in [*self.numeric, *self.categorical] if name not in rows.columns]
        if missing:
            raise ServingInputError(
                f"input lacks column(s) {missing}: the model needs {self.numeric + self.categorical}"
            )
        parts = [np.empty((len(rows), 0))]
        if self.numeric:
            values = np.column_stack([_numbers(rows[name], name) for name in self.numeric])
            values = np.where(np.isnan(values), np.asarray(self.numeric_fill), values)
            parts.append((values - np.asarray(self.numeric_mean)) / np.asarray(self.numeric_scale))
        for name, fill, known in zip(self.categorical, self.categorical_fill, self.categories, strict=True):
            text = _category_text(rows[name], self.raw_kinds.get(name, "O"))
            text = np.where(pd.isna(text), fill, text)
            parts.append((text[:, None] == np.asarray(known, dtype=object)[None, :]).astype(np.float64))
        return np.ascontiguousarray(np.hstack(parts), dtype=np.float32)

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.KIND, **asdict(self)}

    def schema_columns(self) -> list[tuple[str, str]]:
        """(column, MLflow type) of every input column, in the order of the training table."""
        return [(name, SCHEMA_TYPES.get(self.raw_kinds.get(name, "O"), "string")) for name in self.columns]

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]


def table_preprocessor(transformer: Any, raw_kinds: dict[str, str]) -> TablePreprocessor:
    """The plain-data twin of a fitted `data.preprocess.build_transformer` ColumnTransformer."""
    numeric: list[str] = []
    fill: list[float] = []
    mean: list[float] = []
    scale: list[float] = []
    categorical: list[str] = []
    modes: list[str] = []
    categories: list[list[str]] = []
    for step, pipeline, columns in transformer.transformers_:
        if step == "num":
            numeric = [str(c) for c in columns]
            fill = [float(v) for v in pipeline.named_steps["impute"].statistics_]
            mean = [float(v) for v in pipeline.named_steps["scale"].mean_]
            scale = [float(v) for v in pipeline.named_steps["scale"].scale_]
        elif step == "cat":
            categorical = [str(c) for c in columns]
            modes = [str(v) for v in pipeline.named_steps["impute"].statistics_]
            categories = [[str(v) for v in known] for known in pipeline.named_steps["onehot"].categories_]
    return TablePreprocessor(numeric, fill, mean, scale, categorical, modes, categories, dict(raw_kinds))


_KINDS: dict[str, type[TablePreprocessor]] = {TablePreprocessor.KIND: TablePreprocessor}


def preprocessor_from_state(state: dict[str, Any]) -> Preprocessor:
    """Rebuild the preprocessor `to_state` wrote (by its `kind`)."""
    fields = dict(state)
    kind = fields.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"unknown preprocessor kind {kind!r}: this stagetune knows {sorted(_KINDS)}")
    return _KINDS[kind](**fields)


def serving_paths(data_path: str | Path) -> tuple[Path, Path]:
    """Where Stage 1 keeps the fitted preprocessing (JSON) and the raw test rows (Parquet), beside its npz."""
    path = Path(data_path)
    return path.with_suffix(".preprocess.json"), path.with_suffix(".test-rows.parquet")


def write_serving_files(data_path: Path, preprocessor: Preprocessor, raw_test_rows: pd.DataFrame) -> None:
    """Write the preprocessing state and the test split's raw rows next to Stage 1's npz (each atomically)."""
    state_path, rows_path = serving_paths(data_path)
    temporary = state_path.with_name(f".{state_path.name}.tmp")
    temporary.write_text(json.dumps(preprocessor.to_state(), indent=1))
    temporary.replace(state_path)
    temporary = rows_path.with_name(f".{rows_path.name}.tmp")
    raw_test_rows.reset_index(drop=True).to_parquet(temporary, index=False)
    temporary.replace(rows_path)


def raw_kinds(frame: pd.DataFrame) -> dict[str, str]:
    """numpy dtype kind per column of the table as read (what `_category_text` needs to spell categories)."""
    kinds = {}
    for name in frame.columns:
        kind = frame[name].dtype.kind
        kinds[str(name)] = kind if kind in SCHEMA_TYPES else "O"
    return kinds


def _numbers(column: pd.Series, name: str) -> np.ndarray:
    """As the loader's `cleaning.numeric_values`: parsed numbers, beyond-float32 values made missing."""
    parsed = pd.to_numeric(column, errors="coerce")
    bad = parsed.isna() & column.notna()
    if bad.any():
        examples = column[bad].astype(str).unique()[:3].tolist()
        raise ServingInputError(f"column {name!r} must hold numbers, as in training, but holds {examples}")
    values = parsed.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    with np.errstate(invalid="ignore"):
        values[~np.isnan(values) & ~(np.abs(values) <= _FLOAT32_MAX)] = np.nan
    return values


def _category_text(column: pd.Series, kind: str) -> np.ndarray:
    """Categories spelled as the loader spelled them (`str()` of the value as read); NaN where missing.

    A column read as integers spells 3 as "3"; served rows that carry a missing value arrive as floats
    (3.0), so integer columns are spelled from their integer value.
    """
    values = np.full(len(column), np.nan, dtype=object)
    for i, value in enumerate(column.tolist()):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if kind in "iu" and isinstance(value, float) and value.is_integer():
            value = int(value)
        elif kind == "f" and isinstance(value, int | np.integer) and not isinstance(value, bool):
            value = float(value)
        values[i] = str(value)
    return values
