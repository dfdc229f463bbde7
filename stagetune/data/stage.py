"""Stage 1, sample & rebalance: load, split, preprocess and subsample the data; store the arrays in one npz."""

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from schemas.config import TASK_CHAMPION_METRICS, TASK_OBJECTIVES, PipelineConfig
from schemas.results import SampleResult
from schemas.search_space import CategoricalParam
from stagetune.atomic_file import atomic_binary_file
from stagetune.data.augment import check_augment_settings, per_pixel_warning, pixel_scaling
from stagetune.data.defaults import resolve_data_defaults
from stagetune.data.fingerprint import arrays_fingerprint, dataset_fingerprint
from stagetune.data.loading import RawTable, load_table
from stagetune.data.preprocess import PreparedData, prepare
from stagetune.data.rebalance import class_counts
from stagetune.data.sampling import rebalance_summary, sample_regression_splits, sample_splits
from stagetune.data.source import Features, LoadOptions
from stagetune.errors import InputError
from stagetune.serving.preprocessing import raw_kinds, table_preprocessor, write_serving_files
from stagetune.task.regression import RegressionTask, standardise_targets

SAMPLED_KEYS = ("X_train_sampled", "y_train_sampled", "X_val_sampled", "y_val_sampled")


@dataclass(frozen=True)
class StageArrays:
    """Everything Stage 1 stores: the full preprocessed splits and the sampled ones the search uses.

    Features are float32 and flat (n, d) even for images (the model reshapes to `input_shape`); labels are
    int64, 0..C-1 over `class_names` for the full splits and 0..K-1 over `sampled_class_names` for the rest.
    For an indexed source (image folder, image CSV, py: factory) the features are `LazyRows`: row indices
    whose samples the loaders read batch by batch.
    """

    X_train: Features
    y_train: np.ndarray
    X_val: Features
    y_val: np.ndarray
    X_test: Features
    y_test: np.ndarray
    X_train_sampled: Features
    y_train_sampled: np.ndarray
    X_val_sampled: Features
    y_val_sampled: np.ndarray


def run_sample_stage(config: PipelineConfig, out_dir: Path) -> SampleResult:
    """Run Stage 1 and write `sample-<fingerprint>.npz` into `out_dir` (atomically); return its description.

    Raises `InputError` (exit code 2) for bad data or settings before anything is written. An indexed
    source (image folder, image CSV, py: factory) stores row indices and a manifest instead of arrays.
    """
    if config.data.source_kind != "table":
        from stagetune.data.indexed_stage import run_indexed_sample_stage  # it imports this module's checks

        return run_indexed_sample_stage(config, out_dir)
    table = load_table(config.data, config.seed)
    if table.task == "regression":
        check_regression_settings(config)
    else:
        check_classification_settings(config)
    check_augment_settings(config, table.image_shape, table.task, table.target_names)
    prepared = prepare(table, config.data, config.seed)
    if table.task == "regression":
        return _regression_result(config, table, prepared, out_dir)
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
    _write_serving_state(path, table, prepared)

    def per_class(labels: np.ndarray, names: tuple[str, ...]) -> dict[str, int]:
        return dict(zip(names, class_counts(labels, len(names)).tolist(), strict=True))

    n_features = prepared.X_train.shape[1]
    pixels = pixel_scaling(prepared.transformer, n_features) if table.image_shape else None
    channels = table.image_shape[0] if table.image_shape else 0
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
        warnings=[*table.warnings, *per_pixel_warning(config, pixels, channels)],
        task_reason=table.task_reason,
        target_names=list(table.target_names),
        input_mean=None if pixels is None else list(pixels.mean),
        input_scale=None if pixels is None else list(pixels.scale),
        defaults=resolve_data_defaults(
            config, "classification", per_class(prepared.y_train, table.class_names), len(prepared.y_train)
        ),
    )


def _regression_result(config: PipelineConfig, table: RawTable, prepared: PreparedData, out_dir: Path) -> SampleResult:
    # Targets are stored standardised with the training split's mean and std; metrics undo it.
    mean, std = standardise_targets(prepared.y_train)
    constant = [name for name, s in zip(table.target_names, std, strict=True) if s == 0]
    if constant:
        raise InputError(
            "data.target",
            f"column(s) {constant} are constant on the training split: point data.target at a target that varies",
        )

    def scaled(y: np.ndarray) -> np.ndarray:
        return ((y.reshape(len(y), -1) - mean) / std).astype(np.float32)

    y_train, y_val, y_test = scaled(prepared.y_train), scaled(prepared.y_val), scaled(prepared.y_test)
    strata = RegressionTask.strata
    sampled = sample_regression_splits(
        prepared.X_train, y_train, prepared.X_val, y_val, strata(y_train), strata(y_val), config.sample, config.seed
    )
    arrays = StageArrays(
        prepared.X_train, y_train, prepared.X_val, y_val, prepared.X_test, y_test,
        sampled.X_train, sampled.y_train, sampled.X_val, sampled.y_val,
    )  # fmt: skip
    fingerprint = dataset_fingerprint(table.content_hash, config.data, config.sample, config.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir.resolve() / f"sample-{fingerprint[:16]}.npz"
    write_npz_atomic(path, asdict(arrays))
    _write_serving_state(path, table, prepared)
    return SampleResult(
        source=config.data.source,
        task="regression",
        task_reason=table.task_reason,
        target_names=list(table.target_names),
        target_mean=mean.tolist(),
        target_std=std.tolist(),
        data_path=str(path),
        fingerprint=fingerprint,
        sampled_fingerprint=_sampled_fingerprint(arrays),
        class_names=[],
        num_classes=0,
        input_shape=[prepared.X_train.shape[1]],
        feature_names=list(prepared.feature_names),
        n_rows=table.n_rows,
        n_train=len(y_train),
        n_val=len(y_val),
        n_test=len(y_test),
        n_train_sampled=len(sampled.y_train),
        n_val_sampled=len(sampled.y_val),
        class_counts_train={},
        class_counts_sampled={},
        class_counts_rebalanced={},
        rebalance="none",
        dropped_columns=list(table.dropped_columns),
        dropped_label_rows=table.dropped_label_rows,
        warnings=list(table.warnings),
        defaults=resolve_data_defaults(config, "regression", {}, len(y_train)),
    )


def _write_serving_state(path: Path, table: RawTable, prepared: PreparedData) -> None:
    """Beside the npz: the fitted preprocessing as plain data and the test split's raw rows (for the
    final stage's MLflow model, and to re-score a champion on this test split)."""
    raw = table.raw_features if table.raw_features is not None else table.features
    preprocessor = table_preprocessor(prepared.transformer, raw_kinds(raw))
    write_serving_files(path, preprocessor, raw.iloc[prepared.test_index])


def check_regression_settings(config: PipelineConfig) -> None:
    """Class rebalancing and class subsets mean nothing without classes: refuse them, naming the field."""
    fields = {
        "sample.rebalance": config.sample.rebalance != "none",
        "model.baseline.rebalance": config.model.baseline.rebalance != "none",
        "space.rebalance": any(str(c) not in ("none", "auto") for c in config.space.rebalance.choices),
    }
    for field, bad in fields.items():
        if bad:
            raise InputError(
                field, "rebalancing strategies need classes, and the task is regression: set it to none (the default)"
            )
    if config.sample.classes is not None:
        raise InputError("sample.classes", "a class subset needs classes, and the task is regression: remove it")
    if config.training.loss == "cross_entropy":
        raise InputError("training.loss", "cross_entropy is a classification loss: use auto, mse, huber or l1")
    if "cross_entropy" in (config.model.baseline.loss, *map(str, config.space.loss.choices)):
        raise InputError("space.loss", "cross_entropy is a classification loss: use auto, mse, huber or l1")
    objectives, metrics = TASK_OBJECTIVES["regression"], TASK_CHAMPION_METRICS["regression"]
    if config.search.objective not in ("auto", *objectives):
        raise InputError(
            "search.objective",
            f"{config.search.objective!r} does not fit regression: use auto or one of {list(objectives)}",
        )
    if config.final.champion_metric not in ("auto", *metrics):
        raise InputError(
            "final.champion_metric",
            f"{config.final.champion_metric!r} does not fit regression: use auto or one of {list(metrics)}",
        )


def check_classification_settings(config: PipelineConfig) -> None:
    """A regression objective, champion metric or loss for a classification target is refused, naming the field."""
    objectives, metrics = TASK_OBJECTIVES["classification"], TASK_CHAMPION_METRICS["classification"]
    if config.search.objective not in ("auto", *objectives):
        raise InputError(
            "search.objective",
            f"{config.search.objective!r} does not fit classification: use auto or one of {list(objectives)}",
        )
    if config.final.champion_metric not in ("auto", *metrics):
        raise InputError(
            "final.champion_metric",
            f"{config.final.champion_metric!r} does not fit classification: use auto or one of {list(metrics)}",
        )
    if config.training.loss not in ("auto", "cross_entropy"):
        raise InputError("training.loss", f"{config.training.loss!r} is a regression loss: use auto or cross_entropy")
    losses = {config.model.baseline.loss, *map(str, config.space.loss.choices)} - {"auto", "cross_entropy"}
    if losses:
        raise InputError("space.loss", f"{sorted(losses)} are regression losses: use auto or cross_entropy")


def load_stage_arrays(result: SampleResult, options: LoadOptions | None = None) -> StageArrays:
    """Read the arrays Stage 1 stored; fails if the file is missing or no longer matches `result`.

    `options` (DataLoader workers, pinned memory) apply to an indexed source's lazily read rows.
    """
    if result.source_kind != "table":
        from stagetune.data.indexed_stage import load_indexed_arrays

        return StageArrays(**load_indexed_arrays(result, options))
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
    payload: dict[str, Any] = dict(arrays)  # numpy's stubs confuse **arrays with allow_pickle
    with atomic_binary_file(path) as handle:
        np.savez(handle, **payload)


def _sampled_fingerprint(arrays: StageArrays) -> str:
    return arrays_fingerprint({key: np.asarray(getattr(arrays, key)) for key in SAMPLED_KEYS})


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
