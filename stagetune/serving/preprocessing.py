"""Fitted preprocessing as plain data, applied to raw rows exactly as Stage 1 applied it in training.

Stage 1 fits a scikit-learn ColumnTransformer on the training split (`data.preprocess`). A served model
gets rows as they come in the user's data, so the serving side needs the same two steps in order:
the loader's cleaning (numbers parsed, infinities made missing, categories turned into text as the
loader did) and the fitted transform (median imputation + standardisation; mode imputation + one-hot,
unseen categories as all zeros). The fitted statistics are stored as JSON, not pickled, so a model
artifact holds no code. Each kind of input is one `Preprocessor` class, picked by `KIND` in its state:
`TablePreprocessor` for tables, `ImagePreprocessor` for image folders and image CSVs (decoded by
`data.images`, the training code itself: resize, grayscale or RGB, [0, 1], per-channel standardisation).
"""

import base64
import binascii
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, Protocol

import numpy as np
import pandas as pd
import torch

from stagetune.atomic_file import atomic_binary_file, write_text_atomically
from stagetune.data.images import ImageReader, decode_image
from stagetune.errors import InputError

_FLOAT32_MAX = float(np.finfo(np.float32).max)
SCHEMA_TYPES = {"i": "any", "u": "any", "f": "any", "b": "any", "O": "string"}
"""MLflow column types per raw numpy dtype kind. Numbers are "any": MLflow refuses int64 for a double
column and floats (what a missing value makes of an integer column) for a long one, while training
took both; `transform` checks them itself and names a column holding anything but numbers."""
BASE64_SUFFIX = "_base64"
"""The served image model's second input column: `<image column>_base64`, an image file's bytes in base64."""
EXAMPLE_ROWS = 5
EXAMPLE_IMAGES = 2


class ServingInputError(ValueError):
    """Rows a served model cannot take: a column missing or holding values of the wrong kind."""


class Preprocessor(Protocol):
    """Raw inputs in, the float32 matrix the network was trained on out."""

    def transform(self, rows: pd.DataFrame) -> np.ndarray: ...

    def to_state(self) -> dict[str, Any]: ...

    def schema_columns(self) -> list[tuple[str, str, bool]]: ...

    def input_example(self, raw_rows: pd.DataFrame) -> pd.DataFrame: ...


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

    def schema_columns(self) -> list[tuple[str, str, bool]]:
        """(column, MLflow type, required) of every input column, in the order of the training table."""
        return [(name, SCHEMA_TYPES.get(self.raw_kinds.get(name, "O"), "string"), True) for name in self.columns]

    def input_example(self, raw_rows: pd.DataFrame) -> pd.DataFrame:
        """The model's input example: the first few raw test rows."""
        return raw_rows.head(EXAMPLE_ROWS).reset_index(drop=True)

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


@dataclass(frozen=True)
class ImagePreprocessor:
    """Image files (paths, or base64 bytes) in, the standardised (N, C, H, W) float32 batch training read out.

    Each input row names one image: column `column` holds a path (absolute, or relative to the working
    directory of the process that predicts), or column `<column>_base64` holds the image file's bytes
    in base64 (standard alphabet; for HTTP clients). A row gives one of the two.
    """

    KIND: ClassVar[str] = "image"
    column: str
    size: list[int]
    """(H, W) every image is resized to."""
    mode: str
    """Pillow mode the images are converted to: "L" (grayscale) or "RGB"."""
    mean: list[float]
    std: list[float]
    """Per-channel mean and std of the training split's [0, 1] pixels."""

    def transform(self, rows: pd.DataFrame) -> np.ndarray:
        """Decode, resize, scale and standardise the image of every row, as Stage 1's readers do."""
        paths, encoded = self.column, self.base64_column
        if paths not in rows.columns and encoded not in rows.columns:
            raise ServingInputError(
                f"input lacks column {paths!r} (image paths) or {encoded!r} (base64 image bytes): give one of them"
            )
        reader = ImageReader("", [], (self.size[0], self.size[1]), self.mode, self.mean, self.std)
        path_values = rows[paths].tolist() if paths in rows.columns else [None] * len(rows)
        encoded_values = rows[encoded].tolist() if encoded in rows.columns else [None] * len(rows)
        images = []
        for position, (path, data) in enumerate(zip(path_values, encoded_values, strict=True)):
            source = self._image_source(position, path, data)
            try:
                pixels = decode_image(source, reader.size, reader.mode)
            except InputError as error:
                name = paths if isinstance(source, Path) else encoded
                raise ServingInputError(f"row {position}, column {name!r}: {error.message}") from None
            images.append(reader.standardised(pixels))
        if not images:
            return np.empty((0, 1 if self.mode == "L" else 3, *self.size), dtype=np.float32)
        return torch.stack(images).numpy()

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.KIND, **asdict(self)}

    def schema_columns(self) -> list[tuple[str, str, bool]]:
        """Two optional text columns: image paths, and base64 image bytes (each row gives one)."""
        return [(self.column, "string", False), (self.base64_column, "string", False)]

    def input_example(self, raw_rows: pd.DataFrame) -> pd.DataFrame:
        """The first test images' bytes in base64: an example that works where the training files are absent."""
        encoded = [
            base64.b64encode(Path(path).read_bytes()).decode("ascii")
            for path in raw_rows[self.column].head(EXAMPLE_IMAGES)
        ]
        return pd.DataFrame({self.base64_column: encoded})

    @property
    def base64_column(self) -> str:
        return f"{self.column}{BASE64_SUFFIX}"

    def _image_source(self, position: int, path: object, data: object) -> Path | IO[bytes]:
        """The file, or the decoded bytes, row `position` names; ServingInputError unless exactly one is given."""
        has_path, has_data = not _missing(path), not _missing(data)
        if has_path == has_data:
            given = "both" if has_path else "neither"
            raise ServingInputError(
                f"row {position} gives {given} of {self.column!r} (an image path) and {self.base64_column!r} "
                "(base64 image bytes): give exactly one"
            )
        if has_path:
            if not isinstance(path, str):
                raise ServingInputError(f"row {position}, column {self.column!r}: an image path is text, not {path!r}")
            return Path(path).expanduser()
        if not isinstance(data, str | bytes):
            raise ServingInputError(f"row {position}, column {self.base64_column!r}: base64 is text, not {data!r}")
        try:
            return io.BytesIO(base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError) as error:
            raise ServingInputError(
                f"row {position}, column {self.base64_column!r} is not base64 ({error}): encode the image "
                "file's bytes with the standard base64 alphabet"
            ) from None


def image_preprocessor(
    column: str, size: tuple[int, int], mode: str, mean: list[float], std: list[float]
) -> ImagePreprocessor:
    """The served preprocessing of an image source: Stage 1's decode settings and training-split statistics."""
    return ImagePreprocessor(
        column, [int(size[0]), int(size[1])], mode, [float(v) for v in mean], [float(v) for v in std]
    )


_KINDS: dict[str, type[TablePreprocessor] | type[ImagePreprocessor]] = {
    TablePreprocessor.KIND: TablePreprocessor,
    ImagePreprocessor.KIND: ImagePreprocessor,
}


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
    write_text_atomically(state_path, json.dumps(preprocessor.to_state(), indent=1), fsync=False)
    with atomic_binary_file(rows_path, fsync=False) as stream:
        raw_test_rows.reset_index(drop=True).to_parquet(stream, index=False)


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


def _missing(value: object) -> bool:
    """None, NaN or pd.NA: a cell left empty (a DataFrame fills a column a row does not use with these)."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


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
