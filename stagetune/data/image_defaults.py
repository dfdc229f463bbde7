"""Budgets and ranges for image data that the user left unset, resolved at Stage 1 with the reason for each.

The embedded defaults are sized for tables: 3 coarse epochs on half of the sampled rows, batch sizes up
to 256, depth 0-3. On an image folder of 1,200 32x32 images (840 training rows) that gave a coarse
trial 6-40 optimizer steps, and a CNN trained from scratch does not leave its initial plateau (loss ln C)
that fast: measured here on `stagetune make-example shapes` (32 px, 840 rows, batch 32, lr 3e-3), a
depth-3 CNN sat at chance for 1-2 epochs with batch norm and 5-6 epochs without (~30-160 steps), then
reached 0.94-0.99 validation accuracy by epoch 15; a depth-2 one was still below 0.65 after 15 epochs
(its 10-pixel receptive field cannot see a whole shape). All 20 coarse trials of the embedded defaults
scored ~ln 4 (chance), so the search had nothing to narrow on. Image data (samples of shape [C, H, W]
read from an image folder, an image CSV or a py: factory) therefore get, for every field the config does
not set:

- space.depth from the image size: 0 (a linear model on the pixels, which position-coded images need:
  "a search space should be able to reach" the linear baseline, TUNING-RULES.md), then from the least
  depth whose receptive field (3x3 convolutions, 2x2 pooling) spans half the image to the depth that
  pools it down to 2x2; model.baseline.depth that least CNN depth. TUNING-RULES.md "depth / width" (3x3
  filters, channels 2^n); the receptive-field rule is general practice, not from the five texts.
- space.batch_size: the powers of two from 16 to 256 that give an epoch of the sampled rows at least
  MIN_STEPS_PER_EPOCH steps (at least the two smallest).
- coarse.train_fraction 1.0: Stage 1's sampling (sample.max_rows) already reduced the problem
  (TUNING-RULES.md "tune on a reduced problem"); halving it again halves every trial's steps.
- coarse.epochs: enough for COARSE_STEPS optimizer steps at the largest batch size; refine.epochs
  REFINE_EPOCHS_FACTOR x that ("coarse to fine: ... more epochs", TUNING-RULES.md method).
- On CPU, where one image trial costs orders of magnitude more than a table's ("panda vs caviar: choose
  by compute available", TUNING-RULES.md method, 001): CPU_COARSE_TRIALS coarse and CPU_REFINE_TRIALS
  refinement trials, and space.channels CPU_CHANNELS.

A field the config sets (in its file or with --set) is never changed: `PipelineConfig` remembers which
fields were given (pydantic's `model_fields_set`, kept by `stagetune.config_loading.load_config`).
"""

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from schemas.config import PipelineConfig
from schemas.search_space import CategoricalParam, IntParam

COARSE_STEPS = 150
"""Optimizer steps every coarse trial gets at least: past the ~30-160 steps the shapes CNNs sat at chance."""
REFINE_EPOCHS_FACTOR = 2
MIN_STEPS_PER_EPOCH = 20
BATCH_SIZES = (16, 32, 64, 128, 256)
MAX_COARSE_EPOCHS = 50
CPU_COARSE_TRIALS = 8
CPU_REFINE_TRIALS = 4
CPU_CHANNELS = [16, 32]
RULES = "TUNING-RULES.md"


def is_image_data(input_shape: Sequence[int], source_kind: str) -> bool:
    """Samples are [C, H, W] images read lazily (image folder, image CSV, py: factory of image tensors).

    builtin:digits (8x8 images held as a table) keeps the embedded defaults it was tuned with.
    """
    return len(input_shape) == 3 and source_kind != "table"


def receptive_field(depth: int) -> int:
    """Pixels one output of `depth` blocks of [3x3 conv (padding 1) -> 2x2 max-pool] sees along an axis."""
    field, jump = 1, 1
    for _ in range(depth):
        field += 2 * jump  # the 3x3 convolution
        field += jump  # the 2x2 pooling
        jump *= 2
    return field


def depth_range(height: int, width: int) -> tuple[int, int]:
    """(least depth whose receptive field spans half the shorter side, depth that pools it to 2x2), low >= 1."""
    side = min(height, width)
    deepest = max(1, int(math.log2(side)) - 1) if side >= 4 else 1
    shallowest = next((d for d in range(1, deepest + 1) if receptive_field(d) >= side / 2), deepest)
    return shallowest, deepest


def image_batch_sizes(rows: int) -> list[int]:
    """BATCH_SIZES giving an epoch of `rows` at least MIN_STEPS_PER_EPOCH steps (at least the two smallest)."""
    fitting = [size for size in BATCH_SIZES if rows / size >= MIN_STEPS_PER_EPOCH]
    return fitting if len(fitting) >= 2 else list(BATCH_SIZES[:2])


def resolve_image_defaults(
    config: PipelineConfig, input_shape: Sequence[int], source_kind: str, n_train_sampled: int, device_type: str
) -> tuple[dict[str, Any], list[str]]:
    """The settings image data get where the config leaves them unset, by dotted key, and one reason each.

    Empty for anything but image data (`is_image_data`). Values are JSON-able (ranges as dicts).
    """
    if not is_image_data(input_shape, source_kind):
        return {}, []
    settings: dict[str, Any] = {}
    reasons: list[str] = []
    _, height, width = (int(v) for v in input_shape)

    def choose(key: str, value: Any, why: str) -> None:
        if not is_user_set(config, key):
            settings[key] = value
            reasons.append(f"{key} -> {_show(value)}: {why}")

    low, high = depth_range(height, width)
    choose(
        "space.depth",
        {"kind": "categorical", "choices": [0, *range(low, high + 1)]},
        f"{height}x{width} images: 0 (a linear model on the pixels: {RULES}, a search space should reach the first "
        f"baseline a practitioner checks), then from the least depth whose receptive field ({receptive_field(low)} "
        "px) spans half the image to the depth that pools it to 2x2 (3x3 filters, "
        f"{RULES} depth / width; receptive field: general practice): shallower CNNs cannot see a whole object",
    )
    if "space.depth" in settings:
        choose("model.baseline.depth", low, "the shallowest CNN of space.depth")
    rows = n_train_sampled
    sizes = image_batch_sizes(rows)
    choose(
        "space.batch_size",
        {"kind": "categorical", "choices": sizes},
        f"at least {MIN_STEPS_PER_EPOCH} steps per epoch of the {rows} sampled rows (a CNN from scratch learns by "
        f"steps; {RULES} batch size: too small hurts BatchNorm, so 16 at least)",
    )
    batch_choices = sizes if "space.batch_size" in settings else _choices(config.space.batch_size)
    if "space.batch_size" in settings and config.model.baseline.batch_size not in sizes:
        choose("model.baseline.batch_size", sizes[-1], "the largest of space.batch_size")
    choose(
        "coarse.train_fraction",
        1.0,
        f"Stage 1 already reduced the problem to {rows} rows ({RULES} tune on a reduced problem); halving it again "
        "halves every coarse trial's steps",
    )
    fraction = settings.get("coarse.train_fraction", config.coarse.train_fraction)
    steps_per_epoch = max(1, math.ceil(rows * fraction / max(batch_choices)))
    coarse_epochs = min(MAX_COARSE_EPOCHS, max(config.coarse.epochs, math.ceil(COARSE_STEPS / steps_per_epoch)))
    choose(
        "coarse.epochs",
        coarse_epochs,
        f"at least {COARSE_STEPS} optimizer steps per trial at batch size {max(batch_choices)} ({steps_per_epoch} "
        "steps per epoch): CNNs trained from scratch sat at chance for ~30-160 steps on the shapes example",
    )
    coarse_epochs = settings.get("coarse.epochs", config.coarse.epochs)
    choose(
        "refine.epochs",
        max(config.refine.epochs, REFINE_EPOCHS_FACTOR * coarse_epochs),
        f"{REFINE_EPOCHS_FACTOR}x the coarse epochs ({RULES} coarse to fine: narrow range, more epochs)",
    )
    if device_type == "cpu":
        _cpu_budget(config, settings, choose)
    return settings, reasons


Choose = Callable[[str, Any, str], None]


def _cpu_budget(config: PipelineConfig, settings: Mapping[str, Any], choose: Choose) -> None:
    panda = f"{RULES} panda vs caviar: choose by compute available"
    narrowing = config.refine.narrowing.top_k
    coarse_trials = max(CPU_COARSE_TRIALS, narrowing, config.refine.warm_start)
    choose("coarse.n_trials", coarse_trials, f"image trials on CPU cost far more than table trials ({panda})")
    choose(
        "refine.n_trials",
        max(CPU_REFINE_TRIALS, config.refine.warm_start),
        f"image trials on CPU cost far more than table trials ({panda})",
    )
    choose("space.channels", {"kind": "categorical", "choices": CPU_CHANNELS}, f"small CNNs on CPU ({panda})")
    if "space.channels" in settings and config.model.baseline.channels not in CPU_CHANNELS:
        choose("model.baseline.channels", CPU_CHANNELS[-1], "the largest of space.channels")


def _choices(param: IntParam | CategoricalParam) -> list[int]:
    """The batch sizes a configured space.batch_size can sample (its two ends for a range)."""
    if isinstance(param, CategoricalParam):
        return [int(choice) for choice in param.choices]
    return [param.low, param.high]


def is_user_set(config: PipelineConfig, key: str) -> bool:
    """True when the config file or a --set gave `key` (dotted), or a field above it that is not a section."""
    node: BaseModel = config
    for part in key.split("."):
        if part not in node.model_fields_set:
            return False
        child = getattr(node, part)
        if not isinstance(child, BaseModel):
            return True
        node = child
    return True


def apply_settings(config: PipelineConfig, settings: Mapping[str, Any]) -> PipelineConfig:
    """`config` with each dotted key of `settings` set (validated again as one config)."""
    if not settings:
        return config
    raw = config.model_dump(mode="python", round_trip=True)
    for key, value in settings.items():
        *sections, name = key.split(".")
        node = raw
        for section in sections:
            node = node[section]
        node[name] = value
    return PipelineConfig.model_validate(raw)


def _show(value: Any) -> str:
    if isinstance(value, dict) and value.get("kind") == "int":
        return f"[{value['low']}, {value['high']}]"
    if isinstance(value, dict) and "choices" in value:
        return str(value["choices"])
    return str(value)
