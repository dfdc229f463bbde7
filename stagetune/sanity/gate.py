"""Stage 2, the sanity gate: is the model/data/code fit to be searched at all?"""

import time
from collections.abc import Sequence

import numpy as np
import torch

from schemas.config import SanityConfig
from schemas.hyperparams import HyperParams
from schemas.results import LrRangePoint, SanityResult
from stagetune.data.source import Features, take_rows
from stagetune.errors import InputError
from stagetune.models import build_model
from stagetune.sanity.diagnosis import diagnose_initial_loss, diagnose_overfit
from stagetune.sanity.lr_range import StepCallback, lr_range_test, suggest_lr
from stagetune.sanity.overfit import overfit_tiny_subset
from stagetune.task.base import Task
from stagetune.task.classification import ClassificationTask
from stagetune.training.loaders import make_train_loader
from stagetune.training.optim import build_optimizer

INITIAL_LOSS_ROWS = 512


def run_sanity_gate(
    x: Features,
    y: np.ndarray,
    *,
    family: str,
    hp: HyperParams,
    input_shape: Sequence[int],
    num_classes: int | Task,
    cfg: SanityConfig,
    device: torch.device,
    seed: int,
    import_path: str | None = None,
    grad_clip_norm: float | None = None,
    oversample_ratio: float = 1.0,
    on_step: StepCallback | None = None,
) -> SanityResult:
    """Run the sanity checks on the (sampled, standardised) training arrays x, y.

    `num_classes` is the Task (or, for a classifier, its number of classes).

    (a) The baseline model's loss at initialisation must be within cfg.init_loss_rel_tolerance of the
        task's expected initial loss (relative): ln(C) for classification; for regression the loss of a
        zero output on the standardised targets, ~1 per output for MSE. A small-init head's outputs are
        independent of the targets, so MSE = 1 + var(output); the default tolerance of 0.5 passes the
        head's near-zero outputs and catches an output std above ~0.7 (a default-init or scaled head,
        or targets left unscaled, where the loss is off by orders of magnitude).
    (b) A large unregularised model of the same family must reach cfg.overfit_target_acc (accuracy;
        R² for regression, or its loss below 1% of its start) on cfg.overfit_samples rows within
        cfg.overfit_max_steps steps (see `overfit_hyperparams`).
    (c) With cfg.lr_range_test, an LR range test on a fresh baseline model, with the baseline
        optimizer and batches (hp.rebalance, `oversample_ratio`), suggests a learning rate: the one
        at the steepest descent of the smoothed loss against log(lr) (`suggest_lr`). It never fails the gate.

    `passed` is (a) and (b); failed checks come back as diagnoses, never as exceptions. Progress
    goes to `on_step(phase, step, metrics)` with phase "overfit" or "lr_range". Random state is
    seeded with `seed` inside a fork, so the caller's global random state is left as it was.
    """
    started = time.perf_counter()
    task = ClassificationTask([str(i) for i in range(num_classes)]) if isinstance(num_classes, int) else num_classes
    expected = task.expected_initial_loss(y)
    output_size = task.output_size
    forked = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(seed)
        initial_loss = measure_initial_loss(x, y, family, hp, input_shape, task, device, seed, import_path)
        overfit = overfit_tiny_subset(
            x,
            y,
            family=family,
            hp=hp,
            input_shape=input_shape,
            task=task,
            cfg=cfg,
            device=device,
            seed=seed,
            import_path=import_path,
            grad_clip_norm=grad_clip_norm,
            on_step=on_step,
        )
        lr_points: list[LrRangePoint] = []
        if cfg.lr_range_test:
            model = build_model(family, hp, input_shape, output_size, import_path, seed=seed).to(device)
            feed = make_train_loader(x, y, hp, task, seed, oversample_ratio)
            optimizer = build_optimizer(hp, model.parameters())
            lr_points = lr_range_test(
                model,
                feed.loader,
                optimizer,
                feed.loss_fn(device),
                device,
                lr_min=cfg.lr_range_min,
                lr_max=cfg.lr_range_max,
                steps=cfg.lr_range_steps,
                grad_clip_norm=grad_clip_norm,
                on_step=on_step,
            )
    initial_diagnosis = diagnose_initial_loss(initial_loss, expected, cfg.init_loss_rel_tolerance)
    overfit_diagnosis = diagnose_overfit(overfit, cfg.overfit_target_acc, cfg.overfit_learning_rate, overfit.score_name)
    diagnoses = [d for d in (initial_diagnosis, overfit_diagnosis) if d is not None]
    return SanityResult(
        passed=initial_diagnosis is None and overfit.reached,
        num_classes=output_size if task.name == "classification" else 0,
        task=task.name,
        expected_initial_loss=expected,
        initial_loss=initial_loss,
        initial_loss_ok=initial_diagnosis is None,
        overfit_samples=overfit.samples,
        overfit_steps=overfit.steps,
        overfit_train_acc=overfit.train_acc,
        overfit_ok=overfit.reached,
        overfit_target=overfit.target,
        overfit_losses=overfit.losses,
        lr_suggestion=suggest_lr(lr_points) if lr_points else None,
        lr_range=lr_points,
        diagnoses=diagnoses,
        seconds=time.perf_counter() - started,
    )


@torch.no_grad()
def measure_initial_loss(
    x: Features,
    y: np.ndarray,
    family: str,
    hp: HyperParams,
    input_shape: Sequence[int],
    task: Task | int,
    device: torch.device,
    seed: int,
    import_path: str | None = None,
) -> float:
    """The task's plain loss for the freshly built baseline model, in eval mode, on up to 512 random rows."""
    if isinstance(task, int):
        task = ClassificationTask([str(i) for i in range(task)])
    size = task.output_size
    model = build_model(family, hp, input_shape, size, import_path, seed=seed).to(device).eval()
    rows = np.random.default_rng(seed).permutation(len(y))[:INITIAL_LOSS_ROWS]
    inputs = torch.as_tensor(take_rows(x, rows), dtype=torch.float32, device=device)
    targets = task.targets_tensor(y[rows]).to(device)
    outputs = model(inputs)
    if outputs.shape != (len(rows), size) and not (
        task.name != "classification" and outputs.numel() == targets.numel()
    ):
        field = "model.import_path" if family == "custom" else "model.family"
        raise InputError(field, f"the model outputs shape {tuple(outputs.shape)}, expected (batch, {size}) outputs")
    outputs = outputs.float().reshape(targets.shape) if targets.is_floating_point() else outputs.float()
    return float(task.eval_loss()(outputs, targets))
