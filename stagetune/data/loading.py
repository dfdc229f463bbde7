"""Stage 1 input: a scikit-learn bundled data set or a CSV/Parquet file, read into a checked `RawTable`."""

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.io.common import infer_compression

from schemas.config import DataConfig, SyntheticDataConfig, SyntheticRegressionConfig
from stagetune.data.cleaning import clean_features, encode_labels, resolve_columns, without_unencodable_columns
from stagetune.data.fingerprint import frame_content_hash
from stagetune.data.remote import read_s3
from stagetune.data.targets import detect_task, regression_targets
from stagetune.errors import InputError

BUILTIN_TARGET = "target"
"""Label column of the builtin data sets (data.target may be left unset for them)."""

DIGITS_IMAGE_SHAPE = (1, 8, 8)


@dataclass(frozen=True)
class RawTable:
    """A table ready to split: typed feature columns, integer labels, and what was fixed on the way."""

    source: str
    features: pd.DataFrame
    """Numeric columns as float64 (NaN where missing), categorical ones as str objects (NaN where missing)."""
    labels: np.ndarray
    """int64 codes 0..C-1 indexing `class_names`; regression: float64 targets (n, k)."""
    class_names: tuple[str, ...]
    """Empty for regression."""
    numeric_columns: tuple[str, ...]
    categorical_columns: tuple[str, ...]
    image_shape: tuple[int, ...] | None
    n_rows: int
    """Rows in the source, before rows with a missing label were dropped."""
    content_hash: str
    """sha256 of the source table as read (see `fingerprint.frame_content_hash`)."""
    dropped_columns: tuple[str, ...]
    dropped_label_rows: int
    warnings: tuple[str, ...]
    task: str = "classification"
    task_reason: str = ""
    target_names: tuple[str, ...] = ()
    raw_features: pd.DataFrame | None = None
    """The kept feature columns as read (before typing), rows as in `features`: what a served model is given."""


def load_table(cfg: DataConfig, seed: int) -> RawTable:
    """Read `cfg.source`, check it, and type its columns; `seed` drives the synthetic generator.

    Raises `InputError` for anything wrong with the data: missing or unreadable file, no rows, unknown
    columns, a single class or classes too small to split, text in numeric columns, no usable feature.
    """
    image_shape: tuple[int, ...] | None = None
    if cfg.source.startswith("builtin:"):
        name = cfg.source.removeprefix("builtin:")
        frame = load_builtin_frame(name, cfg.synthetic, seed, cfg.synthetic_regression)
        targets = cfg.target_columns or builtin_targets(frame)
        if name == "digits" and cfg.features is None:
            image_shape = DIGITS_IMAGE_SHAPE
    else:
        frame = read_table_file(cfg.source)
        if cfg.target is None:  # DataConfig already demands it; keeps this function safe on its own
            raise InputError("data.target", "a file source needs data.target: name its label column")
        targets = cfg.target_columns or []
    if frame.empty:
        raise InputError("data.source", f"{cfg.source!r} has no rows: point data.source at a table with data")
    frame.columns = [str(c) for c in frame.columns]
    frame, nested = without_unencodable_columns(frame, targets, cfg.features)
    content_hash = frame_content_hash(frame)
    target = targets[0]
    numeric, categorical = resolve_columns(frame, targets, cfg.features, cfg.categorical)
    task, task_reason = detect_task(frame, targets, cfg.task)
    if task == "regression":
        labels, keep = regression_targets(frame, targets)
        labels, class_names = labels[keep], list[str]()
    else:
        if len(targets) > 1:
            raise InputError("data.target", "several target columns are a multi-output regression: set data.task")
        labels, class_names, keep = encode_labels(frame[target], target)
    dropped_label_rows = int((~keep).sum())
    features, numeric, categorical, dropped, warnings = clean_features(
        frame.loc[keep], numeric, categorical, drop_constant=image_shape is None
    )
    if dropped_label_rows:
        where = ", ".join(repr(t) for t in targets)
        warnings.insert(0, f"dropped {dropped_label_rows} row(s) whose target in {where} is missing")
    if nested:
        warnings.append(f"left out column(s) {nested} holding lists or mappings (not in data.features)")
    return RawTable(
        source=cfg.source,
        features=features.reset_index(drop=True),
        labels=labels,
        class_names=tuple(class_names),
        numeric_columns=tuple(numeric),
        categorical_columns=tuple(categorical),
        image_shape=image_shape,
        n_rows=len(frame),
        content_hash=content_hash,
        dropped_columns=tuple(dropped),
        dropped_label_rows=dropped_label_rows,
        warnings=tuple(warnings),
        task=task,
        task_reason=task_reason,
        target_names=tuple(targets),
        raw_features=frame.loc[keep, [*numeric, *categorical]].reset_index(drop=True),
    )


def builtin_targets(frame: pd.DataFrame) -> list[str]:
    """Target column(s) of a builtin frame: `target`, or `target0`, `target1`, ... for several outputs."""
    if BUILTIN_TARGET in frame.columns:
        return [BUILTIN_TARGET]
    return [str(c) for c in frame.columns if str(c).startswith(BUILTIN_TARGET)]


def load_builtin_frame(
    name: str, synthetic: SyntheticDataConfig, seed: int, regression: SyntheticRegressionConfig | None = None
) -> pd.DataFrame:
    """A builtin data set as one frame with its label in column `target` (`target0..` for several outputs);
    no network is touched."""
    from sklearn import datasets  # deferred: importing it takes ~1 s, which file sources need not pay

    if name == "synthetic_imbalanced":
        return _synthetic_frame(synthetic, seed)
    if name == "synthetic_regression":
        return friedman_frame(regression or SyntheticRegressionConfig(), seed)
    loaders = {
        "diabetes": datasets.load_diabetes,
        "digits": datasets.load_digits,
        "breast_cancer": datasets.load_breast_cancer,
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
    }
    if name not in loaders:
        raise InputError("data.source", f"unknown builtin data set {name!r}: use one of {sorted(loaders)}")
    bunch = loaders[name]()
    frame = pd.DataFrame(bunch.data, columns=[str(n) for n in bunch.feature_names])
    frame[BUILTIN_TARGET] = bunch.target
    return frame


def _synthetic_frame(cfg: SyntheticDataConfig, seed: int) -> pd.DataFrame:
    from sklearn.datasets import make_classification

    n_classes = len(cfg.class_weights)
    # make_classification needs n_classes * clusters <= 2 ** n_informative.
    clusters = 2 if n_classes * 2 <= 2**cfg.n_informative else 1
    if n_classes > 2**cfg.n_informative:
        raise InputError(
            "data.synthetic.n_informative",
            f"{cfg.n_informative} informative features cannot separate {n_classes} classes: "
            f"use at least {int(np.ceil(np.log2(n_classes)))}",
        )
    x, y = make_classification(
        n_samples=cfg.n_samples,
        n_features=cfg.n_features,
        n_informative=cfg.n_informative,
        n_redundant=min(2, cfg.n_features - cfg.n_informative),
        n_classes=n_classes,
        n_clusters_per_class=clusters,
        weights=cfg.class_weights,
        class_sep=cfg.class_sep,
        flip_y=0.0,  # keep the configured class ratio exact instead of adding label noise
        random_state=seed,
    )
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(cfg.n_features)])
    frame[BUILTIN_TARGET] = y
    return frame


def friedman_frame(cfg: SyntheticRegressionConfig, seed: int) -> pd.DataFrame:
    """Friedman #1 (make_friedman1: 10 sin(pi x0 x1) + 20 (x2 - 0.5)^2 + 10 x3 + 5 x4 + noise, x ~ U[0, 1]) as
    `target` (or `target0`), and for several outputs further non-linear functions of the same inputs, each
    with the same noise."""
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=cfg.n_samples, n_features=cfg.n_features, noise=cfg.noise, random_state=seed)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(cfg.n_features)])
    if cfg.n_outputs == 1:
        frame[BUILTIN_TARGET] = y
        return frame
    rng = np.random.default_rng([seed, 7])
    frame[f"{BUILTIN_TARGET}0"] = y
    for k in range(1, cfg.n_outputs):
        # Other smooth interactions of the informative inputs, shifted by k so the outputs differ.
        a, b, c = x[:, k % 5], x[:, (k + 1) % 5], x[:, (k + 2) % 5]
        clean = 10 * np.cos(np.pi * a * b) + 15 * (c - 0.5) ** 2 + 8 * a * c
        frame[f"{BUILTIN_TARGET}{k}"] = clean + rng.normal(0, cfg.noise, size=len(clean))
    return frame


def read_table_file(source: str) -> pd.DataFrame:
    """Read a local or remote (s3://, via fsspec/s3fs and the standard AWS_* variables) CSV or Parquet file."""
    remote = "://" in source
    if not remote and not Path(source).expanduser().is_file():
        raise InputError(
            "data.source", f"file {source!r} does not exist (relative to {str(Path.cwd())!r}): check the path"
        )
    location = source if remote else str(Path(source).expanduser())
    is_parquet = re.search(r"\.(parquet|pq)(\.gz)?$", source, flags=re.IGNORECASE) is not None
    kind = "Parquet" if is_parquet else "CSV"
    if not remote and Path(location).stat().st_size == 0:
        raise InputError("data.source", f"{source!r} is empty (0 bytes): point data.source at a {kind} file with data")
    try:
        if source.startswith(("s3://", "s3a://")):  # bounded timeouts; network and key problems named as such
            compression = infer_compression(source, "infer")
            return read_s3(source, pd.read_parquet if is_parquet else partial(pd.read_csv, compression=compression))
        return pd.read_parquet(location) if is_parquet else pd.read_csv(location)
    except pd.errors.EmptyDataError:
        raise InputError("data.source", f"{source!r} is empty: point data.source at a {kind} file with data") from None
    except FileNotFoundError:
        raise InputError("data.source", f"{source!r} does not exist: check the path or URI") from None
    except (OSError, ValueError, pa.ArrowException) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            "data.source", f"{source!r} cannot be read as {kind} ({reason}): check the file and its extension"
        ) from exc
