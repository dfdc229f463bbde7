"""Augmentation of training batches on their device: horizontal flip, shift with padding, Gaussian noise.

Conventions (see the keypoint case in ../shared/TUNING-RULES.md: a flip mirrors the x-coordinates AND
swaps left/right points):
- Images come flat (B, C*H*W) or as (B, C, H, W) and leave in the shape they came in.
- Stage 1 may have standardised the pixels (builtin:digits: each pixel by its own training mean and
  std). A flip or shift moves values to other pixels, so it is done in pixel units: the standardisation
  is undone, the image moved, and the standardisation redone. `zeros` padding is black (0 in pixel
  units). Noise is added last, in the units the model sees.
- Coordinate targets are regression columns named `<point>_x` / `<point>_y`, in [-1, 1] across the
  image: -1 the left (top) edge, +1 the right (bottom) edge, the centre of pixel column j of W at
  (2j + 1) / W - 1 (torch's align_corners=False). A flip maps column j to W-1-j, i.e. x -> -x, then
  swaps the flip pairs; a shift by d columns adds 2d / W to x (d rows: 2d / H to y). Stage 1 stores
  targets standardised per column, so the map is applied in original units: v = z * std + mean,
  transform v, z' = (v' - mean) / std.
- Random draws come from a torch.Generator per device, seeded from the run's seed: the same seed gives
  the same augmented batches, and the global random state is never touched.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from schemas.config import AugmentConfig, PipelineConfig
from schemas.hyperparams import HyperParams
from schemas.results import SampleResult
from stagetune.errors import InputError
from stagetune.task.base import Task
from stagetune.task.regression import RegressionTask

_STREAM = 0xA06
"""Mixed into the seed so augmentation draws differ from the shuffling generator's."""
_PADDING_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate"}


@dataclass(frozen=True)
class PixelScaling:
    """How Stage 1 standardised image inputs: fed = (pixel - mean) / scale, per pixel or per channel."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]


@dataclass(frozen=True)
class CoordinateTargets:
    """Standardised regression targets and what a flip or shift does to them (column indices)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    x_columns: tuple[int, ...]
    y_columns: tuple[int, ...]
    flip_order: tuple[int, ...]
    """After a flip, column k holds what column flip_order[k] held (the flip pairs swapped)."""

    @classmethod
    def of(
        cls, names: Sequence[str], mean: Sequence[float], std: Sequence[float], flip_pairs: Sequence[Sequence[str]]
    ) -> "CoordinateTargets":
        """The coordinate columns of `names` and the swaps `flip_pairs` asks for (ValueError naming a bad name)."""
        order = list(range(len(names)))
        for left, right in resolve_flip_pairs(flip_pairs, names):
            order[left], order[right] = right, left
        return cls(
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
            x_columns=tuple(i for i, name in enumerate(names) if name.endswith("_x")),
            y_columns=tuple(i for i, name in enumerate(names) if name.endswith("_y")),
            flip_order=tuple(order),
        )

    @property
    def is_identity(self) -> bool:
        """True if no flip or shift changes these targets (no coordinate column, no pair to swap)."""
        return not self.x_columns and not self.y_columns and self.flip_order == tuple(range(len(self.flip_order)))


def resolve_flip_pairs(flip_pairs: Sequence[Sequence[str]], names: Sequence[str]) -> list[tuple[int, int]]:
    """Column index pairs to swap: a pair of column names, or of point names (both `_x` and `_y` columns)."""
    index = {name: i for i, name in enumerate(names)}
    swaps: list[tuple[int, int]] = []
    for left, right in flip_pairs:
        if left in index and right in index:
            swaps.append((index[left], index[right]))
            continue
        points = [(f"{left}{axis}", f"{right}{axis}") for axis in ("_x", "_y")]
        missing = [name for pair in points for name in pair if name not in index]
        if missing:
            raise ValueError(
                f"[{left}, {right}] names neither two target columns nor two points: no target column "
                f"{sorted(set(missing))} among {list(names)}"
            )
        swaps.extend((index[a], index[b]) for a, b in points)
    return swaps


class BatchAugmenter:
    """Callable (inputs, targets) -> (inputs, targets) applied to each training batch on its device."""

    def __init__(
        self,
        settings: AugmentConfig,
        seed: int,
        image_shape: Sequence[int] | None = None,
        pixels: PixelScaling | None = None,
        coordinates: CoordinateTargets | None = None,
    ) -> None:
        if image_shape is None and (settings.flip_probability > 0 or settings.max_shift > 0):
            raise ValueError("flip and shift need images (an image_shape [C, H, W]); tabular data takes noise only")
        if image_shape is not None and len(image_shape) != 3:
            raise ValueError(f"image_shape must be [C, H, W], got {list(image_shape)}")
        self.settings = settings
        self.image_shape = None if image_shape is None else tuple(int(v) for v in image_shape)
        self.pixels = pixels
        self.coordinates = coordinates
        self.seed = int(np.random.SeedSequence([seed, _STREAM]).generate_state(1, np.uint64)[0] >> 1)
        self._generators: dict[torch.device, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        """This augmenter's generator on `device` (created and seeded on first use)."""
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        settings = self.settings
        if not inputs.is_floating_point():
            inputs = inputs.float()
        generator, device, size = self.generator(inputs.device), inputs.device, len(inputs)
        if self.image_shape is not None and (settings.flip_probability > 0 or settings.max_shift > 0):
            flip = torch.rand(size, generator=generator, device=device) < settings.flip_probability
            shift = settings.max_shift
            dx, dy = (torch.randint(-shift, shift + 1, (2, size), generator=generator, device=device)).unbind(0)
            inputs = self._move_images(inputs, flip, dx, dy)
            if self.coordinates is not None and targets.is_floating_point():
                targets = move_coordinates(targets, self.coordinates, self.image_shape, flip, dx, dy)
        if settings.noise_std > 0:
            noise = torch.randn(inputs.shape, generator=generator, device=device, dtype=inputs.dtype)
            inputs = inputs + settings.noise_std * noise
        return inputs, targets

    def _move_images(
        self, inputs: torch.Tensor, flip: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor
    ) -> torch.Tensor:
        assert self.image_shape is not None
        shape = inputs.shape
        images = inputs.reshape(len(inputs), *self.image_shape)
        mean, scale = self._scaling(images)
        if mean is not None and scale is not None:
            images = images * scale + mean
        images = flip_images(images, flip)
        if self.settings.max_shift > 0:
            images = shift_images(images, dx, dy, self.settings.max_shift, self.settings.padding)
        if mean is not None and scale is not None:
            images = (images - mean) / scale
        return images.reshape(shape)

    def _scaling(self, images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.pixels is None:
            return None, None
        channels = images.shape[1]
        mean = torch.as_tensor(self.pixels.mean, dtype=images.dtype, device=images.device)
        scale = torch.as_tensor(self.pixels.scale, dtype=images.dtype, device=images.device)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # a constant pixel was left unscaled
        per_channel = (channels, 1, 1) if len(mean) == channels else images.shape[1:]
        return mean.reshape(per_channel), scale.reshape(per_channel)


def flip_images(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images with those where `flip` is True mirrored left-right."""
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def shift_images(
    images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, max_shift: int, padding: str
) -> torch.Tensor:
    """(B, C, H, W) images moved by dx columns right and dy rows down (per image, |d| <= max_shift); what the
    move uncovers is padded with `padding` (zeros, reflect, replicate)."""
    batch, _, height, width = images.shape
    padded = functional.pad(images, (max_shift,) * 4, mode=_PADDING_MODES[padding])
    device = images.device
    rows = torch.arange(height, device=device)[None, :] + max_shift - dy[:, None]  # (B, H)
    cols = torch.arange(width, device=device)[None, :] + max_shift - dx[:, None]  # (B, W)
    index = torch.arange(batch, device=device)[:, None, None]
    # Advanced indices split by the channel slice put their (B, H, W) first: the result is (B, H, W, C).
    return padded[index, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def move_coordinates(
    targets: torch.Tensor,
    coordinates: CoordinateTargets,
    image_shape: Sequence[int],
    flip: torch.Tensor,
    dx: torch.Tensor,
    dy: torch.Tensor,
) -> torch.Tensor:
    """Standardised targets after the images were flipped (where `flip`) and then shifted by (dx, dy) pixels."""
    _, height, width = image_shape
    mean = torch.as_tensor(coordinates.mean, dtype=targets.dtype, device=targets.device)
    std = torch.as_tensor(coordinates.std, dtype=targets.dtype, device=targets.device)
    values = targets.reshape(len(targets), -1) * std + mean
    flipped = values[:, list(coordinates.flip_order)]
    xs, ys = list(coordinates.x_columns), list(coordinates.y_columns)
    flipped[:, xs] = -flipped[:, xs]
    values = torch.where(flip[:, None], flipped, values)
    values[:, xs] += (2.0 * dx / width)[:, None].to(values.dtype)
    values[:, ys] += (2.0 * dy / height)[:, None].to(values.dtype)
    return ((values - mean) / std).reshape(targets.shape)


def pixel_scaling(transformer: object, n_pixels: int) -> PixelScaling | None:
    """The per-pixel mean and scale of Stage 1's fitted transformer (its StandardScaler), when every feature
    is a scaled pixel; None otherwise."""
    named = getattr(transformer, "named_transformers_", {})
    if set(named) - {"remainder"} != {"num"}:
        return None
    scaler = named["num"].named_steps.get("scale")
    mean, scale = getattr(scaler, "mean_", None), getattr(scaler, "scale_", None)
    if mean is None or scale is None or len(mean) != n_pixels:
        return None
    return PixelScaling(tuple(float(v) for v in mean), tuple(float(v) for v in scale))


def augmentation_requested(config: PipelineConfig) -> bool:
    """True if some run may augment: the baseline does, or the search space can choose it."""
    return config.model.baseline.augment or any(choice is True for choice in config.space.augment.choices)


def check_augment_settings(
    config: PipelineConfig, image_shape: Sequence[int] | None, task: str, target_names: Sequence[str]
) -> None:
    """Stage 1's check of the augment section against the data (InputError naming the field, exit 2)."""
    settings = config.augment
    if settings.flip_pairs:
        if task != "regression":
            raise InputError(
                "augment.flip_pairs",
                "flip pairs swap regression targets (left/right points), and the task is classification: a class "
                "label does not move with a flip. Remove augment.flip_pairs",
            )
        try:
            resolve_flip_pairs(settings.flip_pairs, target_names)
        except ValueError as error:
            raise InputError("augment.flip_pairs", f"{error}: name points or target columns that exist") from None
    if not augmentation_requested(config):
        return
    if image_shape is None:
        for field, value in (("flip_probability", settings.flip_probability), ("max_shift", settings.max_shift)):
            if value:
                raise InputError(
                    f"augment.{field}",
                    f"is {value}, but the data are a table, not images: flips and shifts need images; "
                    "tabular data takes augment.noise_std only. Set it to 0",
                )
        return
    smallest = min(int(image_shape[1]), int(image_shape[2]))
    if settings.max_shift >= smallest:
        raise InputError(
            "augment.max_shift",
            f"{settings.max_shift} pixels is not below the image's smaller side ({smallest}): use a smaller shift",
        )


def per_pixel_warning(config: PipelineConfig, pixels: PixelScaling | None, channels: int) -> list[str]:
    """A warning when flips or shifts will move pixels standardised one by one (builtin:digits): a pixel that
    is near-constant in the training data (a border) then receives ink, hundreds of standard deviations out."""
    settings = config.augment
    moves = settings.flip_probability > 0 or settings.max_shift > 0
    if not (moves and augmentation_requested(config)) or pixels is None or len(pixels.scale) == channels:
        return []
    return [
        "augment: flips and shifts move pixels into positions Stage 1 standardised with their own mean and std, so "
        "a shifted or mirrored image has values far outside the training data's (builtin:digits, max_shift 1: "
        "|z| up to ~570 against 35 unshifted), which can make augmented runs worse; noise_std alone, or pixels "
        "scaled per channel, does not have this problem"
    ]


def build_augmenter(
    config: PipelineConfig,
    hp: HyperParams,
    task: Task,
    input_shape: Sequence[int],
    seed: int,
    pixels: PixelScaling | None = None,
) -> BatchAugmenter | None:
    """The augmenter of a training run with `hp`, or None when hp.augment is off."""
    if not hp.augment:
        return None
    image_shape = list(input_shape) if len(input_shape) == 3 else None
    coordinates = None
    if isinstance(task, RegressionTask) and image_shape is not None:
        coordinates = CoordinateTargets.of(
            task.target_names, task.mean.tolist(), task.std.tolist(), config.augment.flip_pairs
        )
        if coordinates.is_identity:  # no coordinate column and no pair: targets do not move with the image
            coordinates = None
    return BatchAugmenter(config.augment, seed, image_shape, pixels, coordinates)


def pixels_of(sample: SampleResult) -> PixelScaling | None:
    """How the Stage 1 result's image pixels were standardised (None: fed as they are, or not images)."""
    if sample.input_mean is None or sample.input_scale is None:
        return None
    return PixelScaling(tuple(sample.input_mean), tuple(sample.input_scale))
