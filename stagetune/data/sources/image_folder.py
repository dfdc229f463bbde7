"""Image folder source: DIR/<class>/<image>.png|jpg, one subfolder per class (torchvision's ImageFolder layout)."""

from pathlib import Path
from typing import Any

import numpy as np

from schemas.config import DataConfig
from stagetune.data.cleaning import MIN_ROWS_PER_CLASS
from stagetune.data.images import ImageReader, files_hash, is_image_file, probe_images
from stagetune.data.source import IndexedSource
from stagetune.errors import InputError


def open_source(cfg: DataConfig, seed: int) -> IndexedSource:
    """List DIR's class subfolders and their images (sorted, so the order is the same every time).

    Raises `InputError` on data.source for a missing or empty folder, a folder without class
    subfolders, a class with too few images to split, or an image whose header cannot be read.
    """
    root = Path(cfg.source).expanduser()
    if not root.is_dir():
        raise InputError("data.source", f"folder {cfg.source!r} does not exist: check the path")
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subfolders:
        loose = any(is_image_file(p) for p in root.iterdir())
        hint = " (the images lie directly in it)" if loose else ""
        raise InputError(
            "data.source",
            f"folder {cfg.source!r} has no class subfolders{hint}: put the images of each class in a subfolder "
            "named after the class (DIR/cat/1.png, DIR/dog/2.png, ...)",
        )
    files: list[str] = []
    labels: list[int] = []
    counts: dict[str, int] = {}
    for code, folder in enumerate(subfolders):
        names = sorted(str(p.relative_to(root)) for p in folder.rglob("*") if p.is_file() and is_image_file(p))
        files += names
        labels += [code] * len(names)
        counts[folder.name] = len(names)
    if not files:
        raise InputError(
            "data.source", f"folder {cfg.source!r} holds no .png/.jpg/.jpeg images in its subfolders: add images"
        )
    small = {name: n for name, n in counts.items() if n < MIN_ROWS_PER_CLASS}
    if small:
        raise InputError(
            "data.source",
            f"class folder(s) {small} hold fewer than {MIN_ROWS_PER_CLASS} images, the least a train/validation/"
            "test split needs: add images or remove those folders",
        )
    if len(subfolders) < 2:
        raise InputError("data.source", f"folder {cfg.source!r} has one class subfolder only: a classifier needs two")
    size, mode = probe_images(root, files, cfg)
    manifest: dict[str, Any] = {"root": str(root.resolve()), "files": files, "size": list(size), "mode": mode}
    reader = ImageReader(str(root.resolve()), files, size, mode)
    return IndexedSource(
        kind="image_folder",
        parts={"all": reader},
        labels={"all": np.asarray(labels, dtype=np.int64)},
        task="classification",
        task_reason=f"image folder with {len(subfolders)} class subfolders",
        class_names=tuple(folder.name for folder in subfolders),
        target_names=(),
        input_shape=(1 if mode == "L" else 3, *size),
        content_hash=files_hash(root, files),
        manifest=manifest,
        normalise=True,
    )


def reopen(manifest: dict[str, Any]) -> dict[str, ImageReader]:
    """The reader Stage 1 described in `manifest` (without normalisation: the caller adds the stored stats)."""
    size = (int(manifest["size"][0]), int(manifest["size"][1]))
    return {"all": ImageReader(manifest["root"], manifest["files"], size, manifest["mode"])}
