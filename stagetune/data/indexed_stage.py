"""Stage 1 for indexed sources (image folder, image CSV, py: factory): split and sample the sample list.

Only row indices and labels are computed and stored (an npz of index arrays plus a JSON manifest of the
source); pixels are decoded later, batch by batch, by the loaders. `load_indexed_arrays` gives the
stages the same `StageArrays` the table path gives them, with `LazyRows` in place of feature arrays.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from schemas.config import PipelineConfig
from schemas.results import SampleResult
from stagetune.atomic_file import write_text_atomically
from stagetune.data.cleaning import MIN_ROWS_PER_CLASS
from stagetune.data.defaults import resolve_sample_defaults
from stagetune.data.fingerprint import arrays_fingerprint, dataset_fingerprint
from stagetune.data.images import ImageReader, channel_stats
from stagetune.data.preprocess import stratified_split
from stagetune.data.rebalance import class_counts
from stagetune.data.sampling import rebalance_summary, sample_regression_splits, sample_splits
from stagetune.data.source import IndexedSource, LazyRows, LoadOptions, SampleReader
from stagetune.data.sources import INDEXED_SOURCES
from stagetune.errors import InputError
from stagetune.serving.preprocessing import image_preprocessor, write_serving_files
from stagetune.task.regression import RegressionTask, standardise_targets

INDEX_KEYS = (
    "train_rows", "y_train", "val_rows", "y_val", "test_rows", "y_test",
    "train_sampled_rows", "y_train_sampled", "val_sampled_rows", "y_val_sampled",
)  # fmt: skip
SAMPLED_INDEX_KEYS = ("train_sampled_rows", "y_train_sampled", "val_sampled_rows", "y_val_sampled")


def open_indexed_source(config: PipelineConfig) -> IndexedSource:
    """The configured indexed source, listed and checked (InputError naming the field on bad input)."""
    return INDEXED_SOURCES[config.data.source_kind].open_source(config.data, config.seed)


def indexed_content_fingerprint(config: PipelineConfig) -> str:
    """The Stage 1 fingerprint of the configured source as it is now (a resumed run compares it)."""
    source = open_indexed_source(config)
    return dataset_fingerprint(source.content_hash, config.data, config.sample, config.seed)


def run_indexed_sample_stage(config: PipelineConfig, out_dir: Path) -> SampleResult:
    """Split, sample and (for images) measure normalisation on the sample list; write indices and manifest."""
    from stagetune.data.augment import check_augment_settings
    from stagetune.data.stage import (  # stage.py delegates here: imported late to keep one-way imports
        check_balanced_batches,
        check_classification_settings,
        check_regression_settings,
        write_npz_atomic,
    )

    source = open_indexed_source(config)
    image_shape = source.input_shape if len(source.input_shape) == 3 else None
    check_augment_settings(config, image_shape, source.task, source.target_names)
    splits = _splits(source, config)  # {"train": (part, rows), ...}
    labels = {name: source.labels[part][rows] for name, (part, rows) in splits.items()}
    rows = {name: rows for name, (_, rows) in splits.items()}
    extra: dict[str, Any] = {}
    if source.task == "regression":
        check_regression_settings(config)
        mean, std = standardise_targets(labels["train"])
        constant = [n for n, s in zip(source.target_names, std, strict=True) if s == 0]
        if constant:
            raise InputError("data.target", f"target(s) {constant} are constant on the training split")
        labels = {k: ((v.reshape(len(v), -1) - mean) / std).astype(np.float32) for k, v in labels.items()}
        strata = RegressionTask.strata
        sampled = sample_regression_splits(
            rows["train"], labels["train"], rows["val"], labels["val"],
            strata(labels["train"]), strata(labels["val"]), config.sample, config.seed,
        )  # fmt: skip
        extra = {"target_mean": mean.tolist(), "target_std": std.tolist(), "rebalance": "none"}
    else:
        check_classification_settings(config)
        sampled = sample_splits(
            rows["train"], labels["train"], rows["val"], labels["val"], source.class_names, config.sample, config.seed
        )
        check_balanced_batches(config, len(source.class_names))
        rebalanced = rebalance_summary(
            sampled.y_train, len(sampled.class_names), config.sample.rebalance, config.sample.oversample_ratio,
            config.model.baseline.batch_size, config.seed,
        )  # fmt: skip

        def per_class(y: np.ndarray, names: tuple[str, ...]) -> dict[str, int]:
            return dict(zip(names, class_counts(y, len(names)).tolist(), strict=True))

        extra = {
            "class_counts_train": per_class(labels["train"], source.class_names),
            "class_counts_sampled": per_class(sampled.y_train, sampled.class_names),
            "class_counts_rebalanced": dict(
                zip(sampled.class_names, rebalanced.epoch_class_counts.tolist(), strict=True)
            ),
            "rebalance": config.sample.rebalance,
            "class_weights": None if rebalanced.class_weights is None else rebalanced.class_weights.tolist(),
            "sampled_class_names": list(sampled.class_names),
        }
    image_stats: dict[str, Any] = {}
    if source.normalise:
        reader = source.parts[splits["train"][0]]
        assert isinstance(reader, ImageReader)
        mean_px, std_px = channel_stats(reader, rows["train"], config.seed)
        image_stats = {"image_mean": mean_px, "image_std": std_px}
    arrays = {
        "train_rows": rows["train"], "y_train": labels["train"], "val_rows": rows["val"], "y_val": labels["val"],
        "test_rows": rows["test"], "y_test": labels["test"],
        "train_sampled_rows": sampled.X_train, "y_train_sampled": sampled.y_train,
        "val_sampled_rows": sampled.X_val, "y_val_sampled": sampled.y_val,
    }  # fmt: skip
    fingerprint = dataset_fingerprint(source.content_hash, config.data, config.sample, config.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir.resolve() / f"sample-{fingerprint[:16]}.npz"
    manifest_path = path.with_suffix(".manifest.json")
    manifest = {
        "kind": source.kind,
        "source": source.manifest,
        "parts": {name: part for name, (part, _) in splits.items()},
        "content_hash": source.content_hash,
        "input_shape": list(source.input_shape),
    }
    _write_json_atomic(manifest_path, manifest)
    if image_stats:
        _write_image_serving_files(path, config, source, splits["test"][0], rows["test"], image_stats)
    write_npz_atomic(path, arrays)
    result = SampleResult(
        source=config.data.source,
        source_kind=source.kind,
        manifest_path=str(manifest_path),
        task=source.task,
        task_reason=source.task_reason,
        target_names=list(source.target_names),
        data_path=str(path),
        fingerprint=fingerprint,
        sampled_fingerprint=arrays_fingerprint({k: arrays[k] for k in SAMPLED_INDEX_KEYS}),
        class_names=list(source.class_names),
        num_classes=len(source.class_names),
        input_shape=list(source.input_shape),
        feature_names=[],
        n_rows=sum(len(v) for v in source.labels.values()),
        n_train=len(rows["train"]),
        n_val=len(rows["val"]),
        n_test=len(rows["test"]),
        n_train_sampled=len(sampled.y_train),
        n_val_sampled=len(sampled.y_val),
        **{"class_counts_train": {}, "class_counts_sampled": {}, "class_counts_rebalanced": {}, **extra},
        **image_stats,
        warnings=list(source.warnings),
    )
    return result.model_copy(update={"defaults": resolve_sample_defaults(config, result)})


def _write_image_serving_files(
    path: Path, config: PipelineConfig, source: IndexedSource, part: str, test_rows: np.ndarray, stats: dict[str, Any]
) -> None:
    """Beside the npz: the served model's image preprocessing and the test split's images as absolute paths
    (its raw rows: the final stage's model example, and how a champion is re-scored on this test split).

    The path column is data.image_column for an image CSV and "image" for a folder.
    """
    reader = source.parts[part]
    assert isinstance(reader, ImageReader)
    column = config.data.image_column if source.kind == "image_csv" and config.data.image_column else "image"
    preprocessor = image_preprocessor(column, reader.size, reader.mode, stats["image_mean"], stats["image_std"])
    paths = [str((reader.root / reader.files[int(i)]).resolve()) for i in test_rows]
    write_serving_files(path, preprocessor, pd.DataFrame({column: pd.Series(paths, dtype=object)}))


def _splits(source: IndexedSource, config: PipelineConfig) -> dict[str, tuple[str, np.ndarray]]:
    if "all" not in source.parts:  # the factory split it: keep its splits
        return {name: (name, np.arange(len(source.parts[name]))) for name in ("train", "val", "test")}
    labels = source.labels["all"]
    strata = labels if source.task == "classification" else RegressionTask.strata(labels)
    try:
        train, val, test = stratified_split(strata, config.data.val_fraction, config.data.test_fraction, config.seed)
    except ValueError as error:
        raise InputError(
            "data.source", f"{error}: every class needs at least {MIN_ROWS_PER_CLASS} samples to be split"
        ) from None
    return {"train": ("all", train), "val": ("all", val), "test": ("all", test)}


def load_indexed_arrays(result: SampleResult, options: LoadOptions | None = None) -> dict[str, Any]:
    """The StageArrays fields of an indexed Stage 1 result: `LazyRows` inputs and the stored labels."""
    path, manifest_path = Path(result.data_path), Path(result.manifest_path or "")
    if not path.is_file() or not manifest_path.is_file():
        raise FileNotFoundError(f"Stage 1 data {path} (or its manifest) is gone: rerun the sample stage")
    with np.load(path, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in INDEX_KEYS}
    if arrays_fingerprint({k: arrays[k] for k in SAMPLED_INDEX_KEYS}) != result.sampled_fingerprint:
        raise ValueError(f"Stage 1 data {path} does not match its SampleResult (sampled_fingerprint): rerun the stage")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    readers: dict[str, SampleReader] = dict(INDEXED_SOURCES[manifest["kind"]].reopen(manifest["source"]))
    if result.image_mean is not None and result.image_std is not None:
        readers = {
            name: r.with_stats(result.image_mean, result.image_std) if isinstance(r, ImageReader) else r
            for name, r in readers.items()
        }
    shape = tuple(result.input_shape)
    load = options or LoadOptions()

    def lazy(split: str, rows: np.ndarray) -> LazyRows:
        part = manifest["parts"][split]
        return LazyRows(readers[part], rows, shape, load, identity=f"{manifest['content_hash']}:{part}")

    return {
        "X_train": lazy("train", arrays["train_rows"]), "y_train": arrays["y_train"],
        "X_val": lazy("val", arrays["val_rows"]), "y_val": arrays["y_val"],
        "X_test": lazy("test", arrays["test_rows"]), "y_test": arrays["y_test"],
        "X_train_sampled": lazy("train", arrays["train_sampled_rows"]), "y_train_sampled": arrays["y_train_sampled"],
        "X_val_sampled": lazy("val", arrays["val_sampled_rows"]), "y_val_sampled": arrays["y_val_sampled"],
    }  # fmt: skip


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    write_text_atomically(path, json.dumps(payload), fsync=False)
