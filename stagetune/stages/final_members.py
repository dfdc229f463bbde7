"""Stage 5's training: the members of the final ensemble, one network per seed, each by the rule its data calls for.

- A training split of ordinary size: each member trains on it with early stopping and LR decay on the
  validation split, and keeps its best epoch's weights.
- Small data (`search.cv_folds` resolved above 1): the epoch count comes once from the folds (seed
  `config.seed`), then each member trains on the training and validation rows together for that many
  epochs (`stagetune.training.small_data`).

Member i has seed `config.seed + i`, so `final.ensemble: 1` trains exactly the single network of earlier
releases. A member that diverges is left out (the others still make a model); the first must train.

How many members: up to `final.ensemble`, and only as many as `final.ensemble_budget` x the search's
training compute pays for beyond the first, each costed at what the first took (its epochs times the rows
it trained on). Where the final training is cheap next to the search (small tables) that is all five;
where one final network costs as much as the search (a large table subsampled for tuning, a CNN on CPU)
it is one. Averaging networks lowers the variance of the predictions, which matters most on small, noisy
data: the measured effect is in bench/README.md ("The final ensemble").
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import nn

from schemas.config import PipelineConfig
from schemas.final import EnsembleMember
from schemas.hyperparams import HyperParams
from schemas.pipeline import SearchStageResult
from schemas.results import EpochRecord, SampleResult
from stagetune.data.augment import build_augmenter, pixels_of
from stagetune.data.stage import StageArrays
from stagetune.models import build_model
from stagetune.models.ensemble import ensemble_of
from stagetune.task import Task
from stagetune.training.loaders import make_eval_loader, make_train_loader
from stagetune.training.loop import FitResult, fit
from stagetune.training.reproducibility import seed_global_generator
from stagetune.training.small_data import FitOptions, epochs_from_folds, fit_all_rows, joined

EpochLine = Callable[[int, EpochRecord], None]
"""Called after every epoch of every member with the member's index and the epoch's record."""


@dataclass(frozen=True)
class TrainedMember:
    """One member's network (its best or last epoch's weights) and its training."""

    seed: int
    model: nn.Module
    fit: FitResult

    def summary(self) -> EnsembleMember:
        """The member as recorded in the final result."""
        return EnsembleMember(
            seed=self.seed,
            epochs_run=len(self.fit.history),
            best_epoch=self.fit.best_epoch,
            stopped=self.fit.status,
            best_val_loss=self.fit.best_val_loss,
        )


@dataclass(frozen=True)
class FinalEnsemble:
    """The members that trained, the model that averages them, the small-data rule in words (if it ran), and
    why the ensemble has as many members as it has."""

    members: list[TrainedMember]
    left_out: list[TrainedMember]
    rule: str | None
    size_rule: str | None = None

    @property
    def first(self) -> TrainedMember:
        """The member with the config's own seed: its curve is the stage's curve."""
        return self.members[0]

    def model(self, classifier: bool) -> nn.Module:
        """The registered network: the one member itself, or the mean of several."""
        return ensemble_of([member.model for member in self.members], classifier)


def member_seeds(seed: int, count: int) -> list[int]:
    """The seeds of `count` members: the config's seed first, so one member is the single network."""
    return [seed + index for index in range(count)]


def search_row_epochs(stages: Sequence[SearchStageResult], folds: int) -> float:
    """The search's training compute in row-epochs: every trial's epochs times the rows its stage trained on;
    on small data each trial epoch trains `folds` models on about as many rows."""
    return float(sum(t.epochs_run * s.n_train_rows for s in stages for t in s.trials) * max(1, folds))


def ensemble_size(requested: int, budget_share: float, search_compute: float, member_compute: float) -> int:
    """Members to train: the first always, then as many more (up to `requested` in all) as fit in
    `budget_share` x `search_compute`, each costing `member_compute`."""
    if requested <= 1 or member_compute <= 0:
        return 1
    affordable = int(budget_share * search_compute // member_compute)
    return 1 + min(requested - 1, affordable)


def size_rule(requested: int, size: int, budget_share: float, search_compute: float, member_compute: float) -> str:
    """Why the ensemble has `size` members, in words."""
    if requested <= 1:
        return "final.ensemble is 1: one network"
    cost = f"one network took {member_compute:,.0f} row-epochs; the search {search_compute:,.0f}"
    if size == requested:
        return f"{size} networks (final.ensemble); {cost}, so {size - 1} more fit in {budget_share:g} x the search"
    return (
        f"{size} of up to {requested} networks (final.ensemble): {cost}, and final.ensemble_budget "
        f"{budget_share:g} pays for {size - 1} more"
    )


def train_final_members(
    config: PipelineConfig,
    sample: SampleResult,
    arrays: StageArrays,
    hp: HyperParams,
    task: Task,
    device: torch.device,
    search_compute: float,
    on_epoch: EpochLine,
) -> FinalEnsemble:
    """Train the first member of `hp`, then as many more as `final.ensemble` and its budget allow (module
    docstring); the first member's failure ends the stage (its fit says why)."""
    model_args = (config.model.family, hp, sample.input_shape, task.output_size, config.model.import_path)
    build = partial(build_model, *model_args)
    final = config.final
    train: Callable[[int, int], TrainedMember]
    rule = None
    if config.search.resolved_cv_folds > 1:
        options = FitOptions.of(config)
        x, y = joined(arrays.X_train, arrays.y_train, arrays.X_val, arrays.y_val)
        epochs, chosen, rule = epochs_from_folds(
            partial(build, seed=config.seed), x, y, hp, task, final.max_epochs, device,
            folds=config.search.resolved_cv_folds, seed=config.seed,
            patience=final.early_stopping_patience, options=options,
        )  # fmt: skip
        if epochs is None:  # a fold diverged: no epoch count, nothing to train
            return FinalEnsemble([TrainedMember(config.seed, build(seed=config.seed), chosen.fit)], [], rule)
        rows = len(y)

        def train(index: int, seed: int) -> TrainedMember:
            seed_global_generator(seed)  # only for randomness in a custom model's forward: `build` seeds the rest
            model = build(seed=seed)
            fitted = fit_all_rows(
                model, x, y, hp, task, epochs, device, seed=seed, options=options, on_epoch=partial(on_epoch, index)
            )
            return TrainedMember(seed, model, fitted)
    else:
        rows = len(arrays.y_train)

        def train(index: int, seed: int) -> TrainedMember:
            model = build(seed=seed)
            fitted = _fit_on_validation(config, sample, model, arrays, hp, task, device, seed, partial(on_epoch, index))
            return TrainedMember(seed, model, fitted)

    first = train(0, config.seed)
    if first.fit.best_epoch is None:  # the first member failed: the stage reports its fit
        return FinalEnsemble([first], [], rule)
    member_compute = float(len(first.fit.history) * rows)
    size = ensemble_size(final.ensemble, final.ensemble_budget, search_compute, member_compute)
    others = [train(index, seed) for index, seed in enumerate(member_seeds(config.seed, size)) if index > 0]
    usable = [first, *(member for member in others if member.fit.best_epoch is not None)]
    left_out = [member for member in others if member.fit.best_epoch is None]
    why = size_rule(final.ensemble, size, final.ensemble_budget, search_compute, member_compute)
    return FinalEnsemble(usable, left_out, rule, why)


def _fit_on_validation(
    config: PipelineConfig,
    sample: SampleResult,
    model: nn.Module,
    arrays: StageArrays,
    hp: HyperParams,
    task: Task,
    device: torch.device,
    seed: int,
    on_epoch: Callable[[EpochRecord], None],
) -> FitResult:
    """The training split, early stopping and LR decay on the validation split, best epoch kept."""
    final = config.final
    feed = make_train_loader(arrays.X_train, arrays.y_train, hp, task, seed, config.sample.oversample_ratio)
    augment = build_augmenter(config, hp, feed.task, sample.input_shape, seed, pixels_of(sample))
    feed = replace(feed, augment=augment)
    # Weights, data order, dropout and augmentation have streams seeded with the member's seed (build_model);
    # the global generator is seeded for randomness in a custom model's own forward only.
    seed_global_generator(seed)
    return fit(
        model,
        feed,
        make_eval_loader(arrays.X_val, arrays.y_val, batch_size=1024, task=task),
        hp,
        final.max_epochs,
        device,
        on_epoch=on_epoch,
        grad_clip_norm=config.training.grad_clip_norm,
        amp_bf16=config.execution.amp_bf16,
        lr_plateau_patience=final.lr_plateau_patience,
        lr_plateau_factor=final.lr_plateau_factor,
        early_stopping_patience=final.early_stopping_patience,
        max_batches_per_epoch=config.training.max_batches_per_epoch,
        keep_best_state=True,
    )
