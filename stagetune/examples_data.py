"""Synthetic image data sets written offline (no downloads): `stagetune make-example shapes|keypoints DIR`.

shapes: an image-classification folder (DIR/<shape>/<n>.png): circles, squares, triangles and crosses
drawn with Pillow at random position, size, rotation and colours, on a noisy background.

keypoints: an image-regression set (DIR/images/<n>.png + DIR/keypoints.csv): a filled quadrilateral per
image and the (x, y) of its four named corners (left_top, right_top, right_bottom, left_bottom), scaled
to [-1, 1] as the practitioner notes' keypoint case does (TUNING-RULES.md, "the worked keypoint case").
A horizontal flip mirrors x and swaps each left_* corner with its right_* partner (`KEYPOINT_FLIP_PAIRS`).

Both are deterministic in their seed and written to a temporary sibling folder first, then renamed, so
DIR is either absent or complete.
"""

import csv
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from stagetune.errors import InputError

SHAPES = ("circle", "square", "triangle", "cross")
KEYPOINT_NAMES = ("left_top", "right_top", "right_bottom", "left_bottom")
KEYPOINT_FLIP_PAIRS = (("left_top", "right_top"), ("left_bottom", "right_bottom"))
KEYPOINT_CSV = "keypoints.csv"
NOISE_STD = 10.0
"""Gaussian pixel noise (0-255 scale) added to every image."""


def make_shapes(out: Path, per_class: int = 300, size: int = 32, seed: int = 0) -> int:
    """Write `per_class` noisy shape images per class into out/<shape>/; returns the number of images."""
    _check(out, per_class, size)
    rng = np.random.default_rng(seed)
    with _Staging(out) as staging:
        for name in SHAPES:
            (staging / name).mkdir()
            for index in range(per_class):
                _shape_image(name, size, rng).save(staging / name / f"{index:05d}.png")
    return per_class * len(SHAPES)


def make_keypoints(out: Path, count: int = 1000, size: int = 32, seed: int = 0) -> Path:
    """Write `count` grayscale quadrilateral images and out/keypoints.csv (image path + corner x/y in [-1, 1])."""
    _check(out, count, size)
    rng = np.random.default_rng(seed)
    header = ["image"] + [f"{name}_{axis}" for name in KEYPOINT_NAMES for axis in ("x", "y")]
    with _Staging(out) as staging:
        (staging / "images").mkdir()
        rows: list[list[object]] = []
        for index in range(count):
            image, corners = _quadrilateral_image(size, rng)
            name = f"images/{index:05d}.png"
            image.save(staging / name)
            # Pixel centres span [-1, 1]: x = 2 * (px + 0.5) / size - 1.
            scaled = [round(2 * (value + 0.5) / size - 1, 5) for corner in corners for value in corner]
            rows.append([name, *scaled])
        with (staging / KEYPOINT_CSV).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    return out / KEYPOINT_CSV


def _shape_image(name: str, size: int, rng: np.random.Generator) -> Image.Image:
    background, foreground = _contrasting_colours(rng)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.22, 0.4) * size
    margin = min(radius + 1, size / 2)  # tiny images: the shape may touch the border
    cx, cy = rng.uniform(margin, size - margin, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    if name == "circle":
        ratio = rng.uniform(0.85, 1.0)  # slightly elliptic, so size alone does not give it away
        draw.ellipse([cx - radius, cy - radius * ratio, cx + radius, cy + radius * ratio], fill=foreground)
    else:
        draw.polygon(_outline(name, cx, cy, radius, angle), fill=foreground)
    return _with_noise(image, rng)


def _outline(name: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    if name == "square":
        points = [(math.cos(a), math.sin(a)) for a in np.arange(4) * math.pi / 2 + math.pi / 4]
    elif name == "triangle":
        points = [(math.cos(a), math.sin(a)) for a in np.arange(3) * 2 * math.pi / 3]
    else:  # cross: a plus sign of arms one third as wide as the shape
        w = 1 / 3
        points = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1), (-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w),
                  (-w, 1)]  # fmt: skip
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos)) for x, y in points]


def _quadrilateral_image(size: int, rng: np.random.Generator) -> tuple[Image.Image, list[tuple[float, float]]]:
    background, foreground = (int(v) for v in rng.choice([[40, 200], [200, 40]]) + rng.integers(-20, 20, size=2))
    image = Image.new("L", (size, size), background)
    half = rng.uniform(0.15, 0.24) * size
    margin = half * 1.8  # a jittered, tilted corner lies within 1.77 half-sides of the centre
    cx, cy = rng.uniform(margin, size - margin, size=2)
    angle = rng.uniform(-math.pi / 7, math.pi / 7)  # small tilt: left stays left
    cos, sin = math.cos(angle), math.sin(angle)
    corners = []
    for x, y in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        jx, jy = rng.uniform(-0.25, 0.25, size=2)
        px, py = half * (x + jx), half * (y + jy)
        corners.append((cx + px * cos - py * sin, cy + px * sin + py * cos))
    ImageDraw.Draw(image).polygon(corners, fill=foreground)
    return _with_noise(image, rng), corners


def _contrasting_colours(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    # Any hue, but the shape is always the brighter one (by >= 80 of 255 in mean): the classes differ by
    # outline, not by a contrast polarity a small CNN would first have to learn to ignore.
    while True:
        background, foreground = rng.integers(0, 256, size=(2, 3))
        if int(foreground.mean()) - int(background.mean()) >= 80:
            return tuple(int(v) for v in background), tuple(int(v) for v in foreground)


def _with_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    noisy = np.clip(pixels + rng.normal(0, NOISE_STD, size=pixels.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy)


def _check(out: Path, count: int, size: int) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError("DIR", f"{str(out)!r} exists and is not an empty folder: pick a new folder")
    if count < 3:
        raise InputError("--count", f"{count} is too few: a train/validation/test split needs at least 3")
    if not 8 <= size <= 512:
        raise InputError("--size", f"{size} pixels is outside 8..512: pick a size such as 32")


class _Staging:
    """A temporary folder next to `out`, renamed to `out` when the block succeeds, removed when it fails."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}."))
        self.path.chmod(0o755)  # mkdtemp's folder is private; the data set is not
        return self.path

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        if kind is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        if self.out.exists():
            self.out.rmdir()  # empty (checked): replaced by the finished folder
        os.replace(self.path, self.out)
