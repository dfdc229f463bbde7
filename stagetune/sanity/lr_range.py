"""The learning-rate range test (Leslie Smith 2015; the fastai `lr_find` variant)."""

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from schemas.results import LrRangePoint
from stagetune.training.loaders import endless_batches
from stagetune.training.loop import Batches, LossFn, train_step

StepCallback = Callable[[str, int, dict[str, float]], None]


def lr_range_test(
    model: nn.Module,
    loader: Batches,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    device: torch.device,
    *,
    lr_min: float,
    lr_max: float,
    steps: int,
    grad_clip_norm: float | None = None,
    beta: float = 0.98,
    divergence_factor: float = 4.0,
    on_step: StepCallback | None = None,
) -> list[LrRangePoint]:
    """Train one step per learning rate, from `lr_min` to `lr_max` growing exponentially over `steps` steps.

    The loss is smoothed exponentially (`beta`, bias-corrected). The test stops early once the
    smoothed loss exceeds `divergence_factor` x the best smoothed loss so far, or the loss is not
    finite; that step is not recorded.
    """
    if steps < 2 or not 0 < lr_min < lr_max:
        raise ValueError(f"need steps >= 2 and 0 < lr_min < lr_max, got {steps}, {lr_min}, {lr_max}")
    model.train()
    batches = endless_batches(loader)
    average, best = 0.0, math.inf
    points: list[LrRangePoint] = []
    for step in range(steps):
        lr = lr_min * (lr_max / lr_min) ** (step / (steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, targets = next(batches)
        result = train_step(model, inputs, targets, optimizer, loss_fn, device, grad_clip_norm)
        if not result.finite:
            break
        average = beta * average + (1 - beta) * result.loss
        smoothed = average / (1 - beta ** (step + 1))
        if smoothed > divergence_factor * best:
            break
        best = min(best, smoothed)
        points.append(LrRangePoint(lr=lr, loss=result.loss, smoothed_loss=smoothed))
        if on_step is not None:
            on_step("lr_range", step, {"lr": lr, "loss": result.loss, "smoothed_loss": smoothed})
    return points


MIN_FALL = 0.1
"""The smoothed loss must fall by this share of its starting value for the test to suggest anything."""


def suggest_lr(
    points: list[LrRangePoint], skip_start: int = 10, skip_end: int = 5, min_fall: float = MIN_FALL
) -> float | None:
    """The learning rate where the smoothed loss falls fastest against log(lr) (steepest descent), before
    its lowest point.

    The first `skip_start` and last `skip_end` points are ignored: the start is dominated by the
    smoothing warm-up and the end by the blow-up. None when too few points remain, or when the smoothed
    loss never falls by `min_fall` of its starting value: then the curve is noise around the initial loss
    (a model that needs more steps than the test has, e.g. a CNN from scratch on images: ~30-160 steps
    at chance on the shapes example) and its steepest wiggle would be a learning rate picked at random -
    typically one at the very start of the range (5e-6 on both image configs before this check).
    """
    kept = points[skip_start : len(points) - skip_end]
    if len(kept) < 3:
        return None
    log_lr = np.log10([p.lr for p in kept])
    smoothed = np.array([p.smoothed_loss for p in kept])
    lowest = int(np.argmin(smoothed))
    start = float(smoothed[0])
    if lowest < 2 or start - smoothed[lowest] < min_fall * abs(start):
        return None
    slopes = np.gradient(smoothed[: lowest + 1], log_lr[: lowest + 1])
    steepest = int(np.argmin(slopes))
    if slopes[steepest] >= 0:
        return None
    return kept[steepest].lr
