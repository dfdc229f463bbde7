"""Image CSV source: a CSV with a column of image paths (data.image_column) and target columns (e.g. keypoints)."""

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from schemas.config import DataConfig
from stagetune.data.cleaning import encode_labels
from stagetune.data.images import ImageReader, files_hash, probe_images
from stagetune.data.source import IndexedSource
from stagetune.data.targets import detect_task, regression_targets
from stagetune.errors import InputError


def open_source(cfg: DataConfig, seed: int) -> IndexedSource:
    """Read the CSV (paths relative to its folder) and its targets; every listed image must exist.

    Numeric targets make a regression (several columns: multi-output, e.g. x/y of keypoints); a
    single label column may be a classification (data.task auto decides as for tables).
    """
    csv = Path(cfg.source).expanduser()
    if not csv.is_file():
        raise InputError("data.source", f"file {cfg.source!r} does not exist: check the path")
    try:
        frame = pd.read_csv(csv)
    except (OSError, ValueError, pd.errors.EmptyDataError) as error:
        raise InputError("data.source", f"{cfg.source!r} cannot be read as CSV ({error}): check the file") from None
    column = cfg.image_column or ""
    if column not in frame.columns:
        raise InputError(
            "data.image_column",
            f"{column!r} is not a column of {cfg.source!r} (columns: {list(map(str, frame.columns))[:20]}): "
            "name the column holding the image paths",
        )
    targets = cfg.target_columns or []
    missing = [t for t in targets if t not in frame.columns]
    if missing:
        raise InputError("data.target", f"column(s) {missing} are not in {cfg.source!r}: check the names")
    if frame.empty:
        raise InputError("data.source", f"{cfg.source!r} has no rows: list some images")
    task, reason = detect_task(frame, targets, cfg.task)
    class_names: tuple[str, ...] = ()
    if task == "regression":
        labels, keep = regression_targets(frame, targets)
        labels = labels[keep]
    else:
        codes, names, keep = encode_labels(frame[targets[0]], targets[0])
        labels, class_names = codes, tuple(names)
    paths = frame.loc[keep, column]
    if paths.isna().any():
        raise InputError("data.image_column", f"column {column!r} has empty cells: give every row an image path")
    root = csv.parent.resolve()
    files = [str(p) for p in paths.astype(str)]
    absent = [name for name in files if not (root / name).is_file()]
    if absent:
        raise InputError(
            "data.image_column",
            f"{len(absent)} image(s) listed in {column!r} do not exist, e.g. {str(root / absent[0])!r}: paths are "
            "relative to the CSV's folder",
        )
    size, mode = probe_images(root, files, cfg)
    warnings = () if keep.all() else (f"dropped {int((~keep).sum())} row(s) without a target",)
    return IndexedSource(
        kind="image_csv",
        parts={"all": ImageReader(str(root), files, size, mode)},
        labels={"all": np.asarray(labels)},
        task=task,
        task_reason=reason,
        class_names=class_names,
        target_names=tuple(targets),
        input_shape=(1 if mode == "L" else 3, *size),
        content_hash=files_hash(root, files) + str(pd.util.hash_pandas_object(frame, index=False).sum()),
        manifest={"root": str(root), "files": files, "size": list(size), "mode": mode},
        normalise=True,
        warnings=warnings,
    )


def reopen(manifest: dict[str, Any]) -> dict[str, ImageReader]:
    """The reader Stage 1 described in `manifest` (the caller adds the stored normalisation)."""
    size = (int(manifest["size"][0]), int(manifest["size"][1]))
    return {"all": ImageReader(manifest["root"], manifest["files"], size, manifest["mode"])}
