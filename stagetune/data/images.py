"""Decoding image files with Pillow: resize, grayscale or RGB, scale to [0, 1], standardise per channel.

Shared by the image-folder and image-CSV sources. A reader holds file names only; a sample is decoded
when a loader asks for it (in a DataLoader worker when execution.num_workers > 0).
"""

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from schemas.config import DataConfig
from stagetune.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")
PROBE_IMAGES = 16
"""data.image_mode auto and data.image_size unset look at this many images (spread over the list)."""
STATS_IMAGES = 512
"""Per-channel mean and std are measured on up to this many training images."""


class ImageReader:
    """Decodes image i of `files` (relative to `root`) into a float32 (C, H, W) tensor.

    Pixels are scaled to [0, 1], then standardised with `mean`/`std` per channel when given.
    """

    def __init__(
        self,
        root: str,
        files: Sequence[str],
        size: tuple[int, int],
        mode: str,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        self.root, self.files, self.size, self.mode = Path(root), list(files), size, mode
        channels = 1 if mode == "L" else 3
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).reshape(channels, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).reshape(channels, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> torch.Tensor:
        """Image `index`, decoded, resized and scaled (a decoding error names the file)."""
        return self.standardised(decode_image(self.root / self.files[index], self.size, self.mode))

    def standardised(self, pixels: np.ndarray) -> torch.Tensor:
        """Decoded [0, 1] pixels as a tensor, standardised with this reader's mean and std when it has them.

        The served model (`serving.preprocessing.ImagePreprocessor`) standardises through this too.
        """
        tensor = torch.from_numpy(pixels)
        if self.mean is not None and self.std is not None:
            tensor = (tensor - self.mean) / self.std
        return tensor

    def with_stats(self, mean: Sequence[float], std: Sequence[float]) -> "ImageReader":
        """The same images, standardised with `mean` and `std` per channel."""
        return ImageReader(str(self.root), self.files, self.size, self.mode, mean, std)


def decode_image(path: Path | IO[bytes], size: tuple[int, int], mode: str) -> np.ndarray:
    """One image as float32 (C, H, W) in [0, 1]: converted to `mode` ("L" or "RGB"), resized to (H, W).

    `path` is a file, or an open binary stream of an image file's bytes (the served model's base64 input).
    """
    try:
        with Image.open(path) as image:
            converted = image.convert(mode)
            height, width = size
            if converted.size != (width, height):
                converted = converted.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(converted, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        name = repr(str(path)) if isinstance(path, Path) else "given as bytes"
        raise InputError(
            "data.source", f"image {name} cannot be read ({type(error).__name__}: {error}): fix or remove it"
        ) from None
    return pixels[None] if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def probe_images(root: Path, files: Sequence[str], cfg: DataConfig) -> tuple[tuple[int, int], str]:
    """(H, W) and Pillow mode ("L" or "RGB") for the source: data.image_size/image_mode, else from the files.

    Opens up to PROBE_IMAGES headers spread over `files`; an unreadable one is named in an InputError.
    """
    step = max(1, len(files) // PROBE_IMAGES)
    probed: list[tuple[tuple[int, int], str]] = []
    for name in list(files)[::step][:PROBE_IMAGES]:
        try:
            with Image.open(root / name) as image:
                probed.append(((image.height, image.width), image.mode))
        except (OSError, UnidentifiedImageError) as error:
            raise InputError(
                "data.source", f"image {str(root / name)!r} cannot be read ({type(error).__name__}): fix or remove it"
            ) from None
    size = cfg.image_hw or probed[0][0]
    if cfg.image_mode == "auto":
        mode = "L" if all(m in GRAYSCALE_MODES for _, m in probed) else "RGB"
    else:
        mode = "L" if cfg.image_mode == "grayscale" else "RGB"
    return size, mode


def channel_stats(reader: ImageReader, rows: np.ndarray, seed: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the [0, 1] pixels of up to STATS_IMAGES of `rows` (drawn with `seed`)."""
    picked = np.random.default_rng([seed, 3]).permutation(rows)[:STATS_IMAGES]
    channels = 1 if reader.mode == "L" else 3
    total = torch.zeros(channels, dtype=torch.float64)
    sq = torch.zeros(channels, dtype=torch.float64)
    pixels = 0
    for row in picked:
        flat = reader.read(int(row)).double().reshape(channels, -1)
        total += flat.sum(1)
        sq += (flat**2).sum(1)
        pixels += flat.shape[1]
    mean = total / pixels
    std = torch.sqrt(torch.clamp(sq / pixels - mean**2, min=0.0))
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # a constant channel is left unscaled
    return mean.tolist(), std.tolist()


def files_hash(root: Path, files: Sequence[str]) -> str:
    """sha256 of the file names, sizes and modification times: changes when an image is added, removed or edited."""
    digest = hashlib.sha256()
    for name in files:
        stat = (root / name).stat()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def is_image_file(path: Path) -> bool:
    """A PNG or JPEG file by its suffix (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES
