"""Check (b) of the sanity gate: a large unregularised model must memorise a tiny stratified subset."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from schemas.config import SanityConfig
from schemas.hyperparams import HyperParams
from stagetune.data.sampling import stratified_subsample
from stagetune.data.source import Features, take_rows
from stagetune.models import build_model, get_family
from stagetune.sanity.lr_range import StepCallback
from stagetune.task.base import Task
from stagetune.training.loaders import endless_batches, make_eval_loader, make_train_loader
from stagetune.training.loop import evaluate, train_step
from stagetune.training.optim import build_optimizer

# Accuracy on the subset is measured once per pass over it, but at least this often (in steps).
MAX_STEPS_BETWEEN_CHECKS = 10
# Regression: a training loss below this share of its first step counts as memorised, whatever the R².
REGRESSION_LOSS_SHARE = 0.01
TARGET_SLACK = 1e-9


@dataclass(frozen=True)
class OverfitOutcome:
    """What the overfit run did: losses per step, steps taken, accuracy reached, and the label-prior loss.

    `nonfinite_step`: updates made before the loss went NaN/inf (0: on the very first batch).
    """

    samples: int
    steps: int
    train_acc: float
    """The score reached on the subset: accuracy, or R² for regression."""
    reached: bool
    losses: list[float]
    prior_loss: float
    nonfinite_step: int | None = None
    score_name: str = "train accuracy"
    ceiling: float = 1.0
    """The best score reachable on the subset (below 1 when identical inputs have different targets)."""
    target: float | None = None
    """The score that counted as memorised (sanity.overfit_target_acc applied to the ceiling by the task)."""


def overfit_hyperparams(family: str, hp: HyperParams, cfg: SanityConfig) -> HyperParams:
    """The baseline made large and unregularised: no dropout or weight decay, Adam, and the family's overfit variant.

    The family says how its model grows (`ModelFamily.overfit_changes`): MLP cfg.overfit_width x
    cfg.overfit_depth; CNN cfg.overfit_depth blocks from max(hp.channels, cfg.overfit_width // 8)
    filters; custom: nothing, the factory decides the size (its own params keep their baseline values).
    """
    update: dict[str, object] = {
        "dropout": 0.0,
        "weight_decay": 0.0,
        "optimizer": "adam",
        "learning_rate": cfg.overfit_learning_rate,
        "rebalance": "none",
        "augment": False,
        "batch_size": cfg.overfit_batch_size,
    }
    return hp.model_copy(update=update | get_family(family).overfit_changes(hp, cfg))


def label_prior_loss(y: np.ndarray) -> float:
    """Cross-entropy of always predicting the class frequencies: the best loss without using the inputs."""
    frequencies = np.unique(y, return_counts=True)[1] / len(y)
    return float(-(frequencies * np.log(frequencies)).sum())


def overfit_tiny_subset(
    x: Features,
    y: np.ndarray,
    *,
    family: str,
    hp: HyperParams,
    input_shape: Sequence[int],
    task: Task,
    cfg: SanityConfig,
    device: torch.device,
    seed: int,
    import_path: str | None = None,
    grad_clip_norm: float | None = None,
    on_step: StepCallback | None = None,
) -> OverfitOutcome:
    """Train the overfit model on cfg.overfit_samples rows until its eval-mode score on them reaches the target.

    The score is the task's (accuracy; R² for regression, where a loss below REGRESSION_LOSS_SHARE of its
    first step also counts as memorised).
    """
    rows = stratified_subsample(task.strata(y), cfg.overfit_samples, np.random.default_rng(seed))
    x_small, y_small = take_rows(x, rows), y[rows]  # a few hundred rows at most: read lazily stored ones now
    overfit_hp = overfit_hyperparams(family, hp, cfg)
    model = build_model(family, overfit_hp, input_shape, task.output_size, import_path, seed=seed).to(device)
    optimizer = build_optimizer(overfit_hp, model.parameters())
    loader = make_train_loader(x_small, y_small, overfit_hp, task, seed).loader
    batches, subset = endless_batches(loader), make_eval_loader(x_small, y_small, len(rows), task)
    check_every = min(len(loader), MAX_STEPS_BETWEEN_CHECKS)
    loss_fn = task.eval_loss().to(device)
    score_name = "train accuracy" if task.name == "classification" else "train R²"
    prior = task.prior_loss(y_small)
    # Duplicate inputs with different targets cap what memorising can reach: aim at that share of the cap.
    ceiling = task.overfit_ceiling(x_small, y_small)
    target = task.overfit_target(cfg.overfit_target_acc, ceiling)
    losses: list[float] = []
    accuracy = 0.0
    step = 0
    for step in range(1, cfg.overfit_max_steps + 1):
        model.train()
        inputs, targets = next(batches)
        result = train_step(model, inputs, targets, optimizer, loss_fn, device, grad_clip_norm)
        if not result.finite:
            return OverfitOutcome(
                samples=len(rows),
                steps=step - 1,
                train_acc=accuracy,
                reached=False,
                losses=losses,
                prior_loss=prior,
                nonfinite_step=step - 1,
                score_name=score_name,
            )
        losses.append(result.loss)
        metrics = {"loss": result.loss}
        if step % check_every == 0 or step == cfg.overfit_max_steps:
            stats = evaluate(model, subset, task, device, return_outputs=True)
            assert stats.outputs is not None
            assert stats.targets is not None
            accuracy = task.overfit_score(stats.outputs, stats.targets) if stats.finite else 0.0
            metrics["train_acc"] = accuracy
        if on_step is not None:
            on_step("overfit", step, metrics)
        if memorised(task, accuracy, losses, target):
            break
    reached = memorised(task, accuracy, losses, target)
    return OverfitOutcome(
        len(rows), step, accuracy, reached, losses, prior, score_name=score_name, ceiling=ceiling, target=target
    )


def memorised(task: Task, score: float, losses: list[float], target: float) -> bool:
    """Whether the overfit run has reached `target` (a regression run also when its loss fell below
    REGRESSION_LOSS_SHARE of the first step's)."""
    # The target is a difference of shares (ceiling - allowance), not always the float that `score` is when
    # both stand for the same number of rows; a row is worth far more than the slack.
    if score >= target - TARGET_SLACK:
        return True
    return task.name == "regression" and len(losses) > 1 and losses[-1] < REGRESSION_LOSS_SHARE * losses[0]
