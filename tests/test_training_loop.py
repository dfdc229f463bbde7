"""Data loaders, the epoch loop, evaluation and `fit`."""

import math
from collections.abc import Callable, Iterable

import numpy as np
import pytest
import torch
from torch import nn

from schemas.hyperparams import HyperParams
from schemas.results import EpochRecord
from stagetune.models import build_model
from stagetune.task.classification import ClassificationTask
from stagetune.training.loaders import Batch, TrainFeed, make_eval_loader, make_train_loader
from stagetune.training.loop import FitResult, StopTraining, evaluate, fit, train_one_epoch
from stagetune.training.optim import build_optimizer
from tests.broken_models import NanAfterSteps

CPU = torch.device("cpu")
HP = HyperParams(optimizer="adam", learning_rate=1e-2, width=32, depth=1, batch_size=32, weight_decay=0.0)


def blobs(n: int = 300, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated Gaussian blobs in 8 dimensions."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.normal(scale=4.0, size=(classes, 8))
    return (centres[y] + rng.normal(size=(n, 8))).astype(np.float32), y


def imbalanced(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    y = (np.arange(n) % 10 == 0).astype(np.int64)  # 10% class 1
    return np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32), y


def _batches(loader: Iterable[Batch]) -> list[torch.Tensor]:
    return [targets for _, targets in loader]


def test_same_seed_gives_same_batches_and_another_seed_others() -> None:
    x, y = blobs()
    for strategy in ("none", "oversample", "balanced_batches", "class_weights"):
        hp = HP.model_copy(update={"rebalance": strategy})
        first = _batches(make_train_loader(x, y, hp, 3, seed=1).loader)
        again = _batches(make_train_loader(x, y, hp, 3, seed=1).loader)
        other = _batches(make_train_loader(x, y, hp, 3, seed=2).loader)
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True)), strategy
        assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True)), strategy


def test_an_epoch_yields_every_row_once_in_a_fresh_order_and_evaluation_keeps_row_order() -> None:
    x, y = blobs(n=70)
    loader = make_train_loader(x, y, HP, 3, seed=0).loader
    epochs = [torch.cat([inputs for inputs, _ in loader]) for _ in range(2)]
    for rows in epochs:
        assert [len(inputs) for inputs, _ in loader] == [32, 32, 6]
        assert sorted(rows[:, 0].tolist()) == sorted(x[:, 0].tolist())  # each row once
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled
    ordered = torch.cat([inputs for inputs, _ in make_eval_loader(x, y, batch_size=32)])
    assert torch.equal(ordered, torch.as_tensor(x))
    labels = torch.cat([targets for _, targets in make_eval_loader(x, y, batch_size=32)])
    assert labels.tolist() == y.tolist()


def test_balanced_batches_hold_each_class_equally() -> None:
    x, y = imbalanced()
    feed = make_train_loader(x, y, HP.model_copy(update={"rebalance": "balanced_batches"}), 2, seed=0)
    batches = _batches(feed.loader)
    assert len(batches) == math.ceil(len(y) / HP.batch_size)
    for targets in batches:
        assert torch.bincount(targets, minlength=2).tolist() == [16, 16]
    assert feed.class_weights is None


def test_oversample_grows_the_minority_to_the_ratio() -> None:
    x, y = imbalanced()
    feed = make_train_loader(x, y, HP.model_copy(update={"rebalance": "oversample"}), 2, seed=0, oversample_ratio=0.5)
    counts = torch.bincount(torch.cat(_batches(feed.loader)), minlength=2).tolist()
    assert counts == [180, 90]


def test_class_weights_reach_the_loss() -> None:
    x, y = imbalanced()
    feed = make_train_loader(x, y, HP.model_copy(update={"rebalance": "class_weights"}), 2, seed=0)
    assert feed.class_weights is not None
    assert feed.class_weights.tolist() == pytest.approx([200 / (2 * 180), 200 / (2 * 20)])
    loss_fn = feed.loss_fn(CPU)
    assert loss_fn.weight is not None
    assert torch.equal(loss_fn.weight, feed.class_weights)
    logits, targets = torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1])
    assert loss_fn(logits, targets).item() > nn.CrossEntropyLoss()(logits, targets).item()
    assert make_train_loader(x, y, HP, 2, seed=0).class_weights is None


def test_eval_loader_keeps_row_order_and_evaluate_averages_over_samples() -> None:
    x, y = blobs(n=70)
    loader = make_eval_loader(x, y, batch_size=32)  # 32 + 32 + 6 rows: unequal batches
    assert torch.equal(torch.cat(_batches(loader)), torch.as_tensor(y))
    model = build_model("mlp", HP, [8], 3, seed=0)
    stats = evaluate(model, loader, ClassificationTask(["a", "b", "c"]), CPU, return_outputs=True)
    with torch.no_grad():
        logits = model(torch.as_tensor(x))
    expected = nn.functional.cross_entropy(logits, torch.as_tensor(y)).item()
    assert stats.loss == pytest.approx(expected, rel=1e-5)
    assert stats.predictions is not None
    assert stats.predictions.tolist() == logits.argmax(dim=1).tolist()
    assert stats.accuracy == pytest.approx((stats.predictions == y).mean())


def test_train_one_epoch_stops_after_max_batches() -> None:
    x, y = blobs()
    model = build_model("mlp", HP, [8], 3, seed=0)
    feed = make_train_loader(x, y, HP, 3, seed=0)
    stats = train_one_epoch(
        model, feed.loader, build_optimizer(HP, model.parameters()), nn.CrossEntropyLoss(), CPU, None, max_batches=2
    )
    assert (stats.batches, stats.samples, stats.finite) == (2, 64, True)


def test_fit_learns_a_separable_problem() -> None:
    x, y = blobs(seed=1)
    x_val, y_val = blobs(n=150, seed=1)
    records: list[EpochRecord] = []
    result = fit(
        build_model("mlp", HP, [8], 3, seed=0),
        make_train_loader(x, y, HP, 3, seed=0),
        make_eval_loader(x_val, y_val, 64),
        HP,
        epochs=5,
        device=CPU,
        on_epoch=records.append,
    )
    assert result.status == "completed"
    assert result.reason is None
    assert records == result.history
    assert [r.epoch for r in records] == [0, 1, 2, 3, 4]
    assert records[-1].train_loss < 0.5 * records[0].train_loss
    assert records[-1].val_acc is not None
    assert records[-1].val_acc >= 0.95
    assert all(r.lr == HP.learning_rate for r in records)
    assert result.best_val_loss == min(r.val_loss for r in records if r.val_loss is not None)


def test_nan_loss_ends_the_run_as_diverged() -> None:
    x, y = blobs()
    feed = make_train_loader(x, y, HP, 3, seed=0)  # 10 batches per epoch
    model = NanAfterSteps(HP, [8], 3, steps=13)
    result = fit(model, feed, make_eval_loader(x, y, 64), HP, epochs=5, device=CPU)
    assert result.status == "diverged"
    assert result.reason is not None
    assert "epoch 1, batch 3" in result.reason
    assert len(result.history) == 1


def _overfitting_setup() -> tuple[nn.Module, TrainFeed, Iterable[Batch]]:
    # Validation labels are the training labels shifted by one class: the better the model fits
    # the training data, the worse its validation loss, so validation never improves after epoch 0.
    x, y = blobs()
    model = build_model("mlp", HP, [8], 3, seed=0)
    return model, make_train_loader(x, y, HP, 3, seed=0), make_eval_loader(x, (y + 1) % 3, 64)


def test_early_stopping_stops_and_restores_the_best_epoch() -> None:
    model, feed, val_loader = _overfitting_setup()
    result = fit(model, feed, val_loader, HP, epochs=20, device=CPU, early_stopping_patience=2)
    assert result.status == "early_stopped"
    assert result.best_epoch is not None
    assert len(result.history) == result.best_epoch + 3 < 20
    assert result.reason is not None
    assert "2 epochs" in result.reason
    restored = evaluate(model, val_loader, ClassificationTask(["a", "b", "c"]), CPU)
    assert restored.loss == pytest.approx(result.best_val_loss, rel=1e-6)
    assert restored.loss < (result.history[-1].val_loss or 0.0)


def test_plateau_halves_the_learning_rate() -> None:
    model, feed, val_loader = _overfitting_setup()
    result = fit(model, feed, val_loader, HP, epochs=4, device=CPU, lr_plateau_patience=1)
    # Epoch 0 is best; epochs 1 and 2 are worse, which exceeds a patience of 1: epoch 3 runs at half the LR.
    assert [r.lr for r in result.history] == pytest.approx([1e-2, 1e-2, 1e-2, 5e-3])
    assert result.best_state is None  # only kept with early stopping or keep_best_state


def test_on_epoch_exceptions_propagate_and_stop_training_stops() -> None:
    x, y = blobs()
    calls: list[int] = []

    def prune_at_epoch_1(record: EpochRecord) -> None:
        calls.append(record.epoch)
        if record.epoch == 1:
            raise KeyError("pruned")

    def stop_at_epoch_0(record: EpochRecord) -> None:
        raise StopTraining("time budget spent")

    def run(callback: Callable[[EpochRecord], None]) -> FitResult:
        model = build_model("mlp", HP, [8], 3, seed=0)
        feed = make_train_loader(x, y, HP, 3, seed=0)
        return fit(model, feed, make_eval_loader(x, y, 64), HP, 5, CPU, on_epoch=callback)

    with pytest.raises(KeyError, match="pruned"):
        run(prune_at_epoch_1)
    assert calls == [0, 1]
    stopped = run(stop_at_epoch_0)
    assert (stopped.status, stopped.reason, len(stopped.history)) == ("stopped", "time budget spent", 1)


def test_balanced_batches_smaller_than_the_class_count_are_refused_naming_batch_size() -> None:
    import numpy as np
    import pytest

    from stagetune.errors import InputError
    from stagetune.training.loaders import balanced_sampler

    labels = np.array([0, 1, 2, 0, 1, 2])
    with pytest.raises(InputError, match="batch_size >= 3 classes") as caught:
        balanced_sampler(labels, 2, seed=0)
    assert caught.value.field == "batch_size"
    assert all(len(set(labels[batch])) == 3 for batch in balanced_sampler(labels, 3, seed=0))
