"""Stage 1, sample & rebalance: load, split, preprocess and subsample the data; store the arrays in one npz."""

import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from schemas.config import PipelineConfig
from schemas.results import SampleResult
from schemas.search_space import CategoricalParam
from stagetune.data.fingerprint import arrays_fingerprint, dataset_fingerprint
from stagetune.data.loading import load_table
from stagetune.data.preprocess import prepare
from stagetune.data.rebalance import class_counts
from stagetune.data.sampling import rebalance_summary, sample_splits
from stagetune.errors import InputError

SAMPLED_KEYS = ("X_train_sampled", "y_train_sampled", "X_val_sampled", "y_val_sampled")


@dataclass(frozen=True)
class StageArrays:
    """Everything Stage 1 stores: the full preprocessed splits and the sampled ones the search uses.

    Features are float32 and flat (n, d) even for images (the model reshapes to `input_shape`); labels are
    int64, 0..C-1 over `class_names` for the full splits and 0..K-1 over `sampled_class_names` for the rest.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    X_train_sampled: np.ndarray
    y_train_sampled: np.ndarray
    X_val_sampled: np.ndarray
    y_val_sampled: np.ndarray


def run_sample_stage(config: PipelineConfig, out_dir: Path) -> SampleResult:
    """Run Stage 1 and write `sample-<fingerprint>.npz` into `out_dir` (atomically); return its description.

    Raises `InputError` (exit code 2) for bad data or settings before anything is written.
    """
    table = load_table(config.data, config.seed)
    prepared = prepare(table, config.data, config.seed)
    sampled = sample_splits(
        prepared.X_train,
        prepared.y_train,
        prepared.X_val,
        prepared.y_val,
        table.class_names,
        config.sample,
        config.seed,
    )
    num_sampled = len(sampled.class_names)
    check_balanced_batches(config, len(table.class_names))
    rebalanced = rebalance_summary(
        sampled.y_train,
        num_sampled,
        config.sample.rebalance,
        config.sample.oversample_ratio,
        config.model.baseline.batch_size,
        config.seed,
    )
    arrays = StageArrays(
        X_train=prepared.X_train,
        y_train=prepared.y_train,
        X_val=prepared.X_val,
        y_val=prepared.y_val,
        X_test=prepared.X_test,
        y_test=prepared.y_test,
        X_train_sampled=sampled.X_train,
        y_train_sampled=sampled.y_train,
        X_val_sampled=sampled.X_val,
        y_val_sampled=sampled.y_val,
    )
    fingerprint = dataset_fingerprint(table.content_hash, config.data, config.sample, config.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir.resolve() / f"sample-{fingerprint[:16]}.npz"
    write_npz_atomic(path, asdict(arrays))

    def per_class(labels: np.ndarray, names: tuple[str, ...]) -> dict[str, int]:
        return dict(zip(names, class_counts(labels, len(names)).tolist(), strict=True))

    n_features = prepared.X_train.shape[1]
    return SampleResult(
        source=config.data.source,
        data_path=str(path),
        fingerprint=fingerprint,
        sampled_fingerprint=_sampled_fingerprint(arrays),
        class_names=list(table.class_names),
        num_classes=len(table.class_names),
        input_shape=list(table.image_shape) if table.image_shape else [n_features],
        feature_names=list(prepared.feature_names),
        n_rows=table.n_rows,
        n_train=len(prepared.y_train),
        n_val=len(prepared.y_val),
        n_test=len(prepared.y_test),
        n_train_sampled=len(sampled.y_train),
        n_val_sampled=len(sampled.y_val),
        class_counts_train=per_class(prepared.y_train, table.class_names),
        class_counts_sampled=per_class(sampled.y_train, sampled.class_names),
        class_counts_rebalanced=dict(zip(sampled.class_names, rebalanced.epoch_class_counts.tolist(), strict=True)),
        rebalance=config.sample.rebalance,
        class_weights=None if rebalanced.class_weights is None else rebalanced.class_weights.tolist(),
        sampled_class_names=list(sampled.class_names),
        dropped_columns=list(table.dropped_columns),
        dropped_label_rows=table.dropped_label_rows,
        warnings=list(table.warnings),
    )


def load_stage_arrays(result: SampleResult) -> StageArrays:
    """Read the arrays Stage 1 stored; fails if the file is missing or no longer matches `result`."""
    path = Path(result.data_path)
    if not path.is_file():
        raise FileNotFoundError(f"Stage 1 data {path} is gone: rerun the sample stage")
    with np.load(path, allow_pickle=False) as stored:
        arrays = StageArrays(**{name: stored[name] for name in StageArrays.__dataclass_fields__})
    if _sampled_fingerprint(arrays) != result.sampled_fingerprint:
        raise ValueError(f"Stage 1 data {path} does not match its SampleResult (sampled_fingerprint): rerun the stage")
    return arrays


def write_npz_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write an uncompressed npz so readers see either the old file or the whole new one, never a part."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            payload: dict[str, Any] = dict(arrays)  # numpy's stubs confuse **arrays with allow_pickle
            np.savez(handle, **payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _sampled_fingerprint(arrays: StageArrays) -> str:
    return arrays_fingerprint({key: getattr(arrays, key) for key in SAMPLED_KEYS})


def check_balanced_batches(config: PipelineConfig, n_classes: int) -> None:
    """Balanced batches hold every class: a batch size below the class count is refused here, before
    anything is written, instead of failing the first trial that draws it."""
    space = config.space
    strategies = {config.model.baseline.rebalance, config.sample.rebalance, *map(str, space.rebalance.choices)}
    if "balanced_batches" not in strategies:
        return
    sizes = space.batch_size.choices if isinstance(space.batch_size, CategoricalParam) else [space.batch_size.low]
    smallest = min([int(size) for size in sizes] + [config.model.baseline.batch_size])
    if smallest < n_classes:
        raise InputError(
            "space.batch_size",
            f"balanced_batches puts every one of the {n_classes} classes in each batch, but batch sizes go down to "
            f"{smallest}: raise the smallest batch size (space.batch_size, model.baseline.batch_size) to at least "
            f"{n_classes}, or drop balanced_batches from the rebalancing choices",
        )
