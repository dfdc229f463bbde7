"""Issue 17's rules: the auto objective on skewed classes, the collapse diagnosis, small-data folds, depth 0."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from flows.tune_pipeline import tune_pipeline
from schemas.config import PipelineConfig
from schemas.hyperparams import HyperParams
from schemas.results import EpochRecord
from stagetune.config_loading import load_config
from stagetune.data.defaults import apply_data_defaults, imbalance_ratio, resolve_data_defaults
from stagetune.diagnosis import diagnose_curves
from stagetune.models import build_model
from stagetune.report.advice import concrete_overrides
from stagetune.task.classification import ClassificationTask
from stagetune.training.loaders import make_eval_loader, make_train_loader
from stagetune.training.loop import evaluate, fit
from stagetune.training.small_data import FitOptions, cross_validate, epochs_from_folds, fit_all_rows, fold_indices
from tests.conftest import tiny_config

CPU = torch.device("cpu")


def _resolve(counts: dict[str, int], *overrides: str, n_train: int = 1000, task: str = "classification"):  # type: ignore[no-untyped-def]
    return resolve_data_defaults(load_config(None, list(overrides)), task, counts, n_train)


def test_skewed_classes_get_a_class_weighted_loss_balanced_champion_and_class_weights() -> None:
    defaults = _resolve({"no": 250, "yes": 100})  # ratio exactly 2.5: skewed (at or above the threshold)
    assert defaults.skewed
    assert defaults.imbalance_ratio == 2.5
    assert (defaults.objective, defaults.champion_metric) == ("val_loss", "balanced_accuracy")
    assert defaults.balanced_val_loss
    assert defaults.rebalance == ["class_weights"]
    assert defaults.baseline_rebalance == "class_weights"
    assert any("imbalance_ratio 2.5" in reason for reason in defaults.reasons)


def test_classes_just_below_the_threshold_keep_the_plain_defaults() -> None:
    defaults = _resolve({"no": 249, "yes": 100})
    assert not defaults.skewed
    assert (defaults.objective, defaults.champion_metric) == ("val_loss", "accuracy")
    assert not defaults.balanced_val_loss
    assert defaults.rebalance == ["none"]
    assert defaults.baseline_rebalance is None
    assert _resolve({"no": 249, "yes": 100}, "search.imbalance_ratio=2").skewed
    # The suite's churn table (26.5% positives, 2.77 in its training split) counts as skewed.
    assert _resolve({"no": 3795, "yes": 1370}).skewed


def test_settings_the_user_chose_are_kept_on_skewed_data() -> None:
    defaults = _resolve(
        {"a": 940, "b": 60},
        "search.objective=val_balanced_acc",
        "final.champion_metric=macro_f1",
        "space.rebalance.choices=[none, oversample]",
    )
    assert defaults.skewed
    assert (defaults.objective, defaults.champion_metric) == ("val_balanced_acc", "macro_f1")
    assert defaults.rebalance is None  # space.rebalance was set (not auto): kept
    assert defaults.balanced_val_loss  # the validation loss still drives early stopping: weighted


def test_regression_auto_objective_follows_the_tuned_loss() -> None:
    assert _resolve({}, task="regression").objective == "val_loss"
    tuned = _resolve({}, "space.loss.choices=[mse, huber]", "search.objective=val_rmse", task="regression")
    assert tuned.objective == "val_rmse"
    assert _resolve({}, task="regression").champion_metric == "rmse"


def test_direction_follows_the_resolved_objective_and_auto_has_none() -> None:
    config = PipelineConfig()
    with pytest.raises(ValueError, match="resolved at Stage 1"):
        _ = config.search.direction
    resolved = apply_data_defaults(config, resolve_data_defaults(config, "classification", {"a": 9, "b": 1}, 1000))
    assert resolved.search.objective == "val_loss"
    assert resolved.search.direction == "minimize"
    assert resolved.final.champion_metric == "balanced_accuracy"
    assert resolved.space.rebalance.choices == ["class_weights"]
    assert resolved.model.baseline.rebalance == "class_weights"
    assert resolved.search.resolved_cv_folds == 1
    explicit = load_config(None, ["search.objective=val_balanced_acc"])
    resolved = apply_data_defaults(explicit, resolve_data_defaults(explicit, "classification", {"a": 1, "b": 1}, 1000))
    assert resolved.search.direction == "maximize"


def test_imbalance_ratio_ignores_empty_classes() -> None:
    assert imbalance_ratio({"a": 30, "b": 10, "c": 0}) == 3.0
    assert imbalance_ratio({"a": 5}) == 1.0


def test_balanced_validation_loss_weighs_every_class_equally() -> None:
    targets = torch.tensor([0, 0, 0, 1])
    outputs = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])  # always class 0
    losses = torch.nn.functional.cross_entropy(outputs, targets, reduction="none")
    plain = float(losses.mean())
    balanced = ClassificationTask(["a", "b"], balanced_val_loss=True)
    assert ClassificationTask(["a", "b"]).validation_loss(outputs, targets, plain) == plain
    assert balanced.validation_loss(outputs, targets, plain) == pytest.approx((losses[0] + losses[3]).item() / 2)
    uniform = torch.zeros(4, 2)
    assert balanced.validation_loss(uniform, targets, 0.0) == pytest.approx(math.log(2))
    # evaluate() reports it as the validation loss (what early stopping and val_loss read)
    model = torch.nn.Linear(2, 2)
    loader = make_eval_loader(
        np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32), np.r_[[0] * 36, [1] * 4], batch_size=16
    )
    weighted, plain_stats = (
        evaluate(model, loader, balanced, CPU),
        evaluate(model, loader, ClassificationTask(["a", "b"]), CPU),
    )
    assert weighted.loss != pytest.approx(plain_stats.loss)


def _record(epoch: int, val_loss: float, predicted: float, true: float) -> EpochRecord:
    metrics = {
        "train/acc": 0.94,
        "val/acc": 0.94,
        "val/balanced_acc": 0.5,
        "val/top_class_pred_share": predicted,
        "val/top_class_true_share": true,
    }
    return EpochRecord(epoch=epoch, train_loss=0.25, val_loss=val_loss, metrics=metrics, lr=1e-3, seconds=0.1)


def test_a_model_predicting_the_majority_for_nearly_every_row_is_collapsed() -> None:
    history = [_record(0, 0.30, 0.99, 0.94), _record(1, 0.24, 1.0, 0.94), _record(2, 0.25, 0.9, 0.94)]
    diagnosis = diagnose_curves(history, "completed", reference_loss=math.log(2))
    assert diagnosis.code == "collapsed"  # read at epoch 1, the best validation loss (the epoch kept)
    assert "collapsed to the majority class" in diagnosis.message
    assert "epoch 1" in diagnosis.message
    assert "rebalance" in diagnosis.next_action


def test_no_collapse_below_the_share_or_when_the_data_hold_that_share() -> None:
    below = [_record(0, 0.30, 0.95, 0.94), _record(1, 0.24, 0.96, 0.94)]
    assert diagnose_curves(below, "completed", reference_loss=math.log(2)).code != "collapsed"
    that_skewed = [_record(0, 0.30, 0.99, 0.99), _record(1, 0.24, 1.0, 0.985)]
    assert diagnose_curves(that_skewed, "completed", reference_loss=math.log(2)).code != "collapsed"


def test_collapse_advice_is_a_valid_rebalancing_override() -> None:
    config = PipelineConfig().model_dump(mode="json")
    config["space"]["rebalance"]["choices"] = ["none"]
    assert concrete_overrides("final", "collapsed", config) == ["space.rebalance.choices=[class_weights, oversample]"]
    config["space"]["rebalance"]["choices"] = ["class_weights", "oversample"]
    assert concrete_overrides("final", "collapsed", config) == []


def test_eval_metrics_report_the_most_predicted_class_share() -> None:
    task = ClassificationTask(["a", "b", "c"])
    outputs = torch.tensor([[5.0, 0, 0]] * 9 + [[0, 5.0, 0]])
    metrics = task.eval_metrics(outputs, torch.tensor([0] * 6 + [1] * 2 + [2] * 2))
    assert metrics["val/top_class_pred_share"] == pytest.approx(0.9)
    assert metrics["val/top_class_true_share"] == pytest.approx(0.6)


def test_small_training_splits_get_five_folds_and_the_edge_stays_single_split() -> None:
    assert _resolve({"a": 50, "b": 50}, n_train=199).cv_folds == 5
    assert _resolve({"a": 50, "b": 50}, n_train=200).cv_folds == 1
    assert _resolve({"a": 50, "b": 50}, "search.cv_folds=0", n_train=20).cv_folds == 1
    assert _resolve({"a": 50, "b": 50}, "search.cv_folds=3", n_train=5000).cv_folds == 3
    assert any("cv_folds auto -> 5" in r for r in _resolve({"a": 50, "b": 50}, n_train=150).reasons)


def _blobs(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.normal(size=(n, 4)) + 3.0 * np.eye(3, 4)[y]).astype(np.float32)
    return x, y


def test_folds_are_stratified_and_cover_every_row_once() -> None:
    _, y = _blobs()
    folds = fold_indices(y, 5, seed=0)
    assert len(folds) == 5
    held_out = np.concatenate([val for _, val in folds])
    assert sorted(held_out.tolist()) == list(range(len(y)))
    for _, val in folds:
        assert set(np.unique(y[val]).tolist()) == {0, 1, 2}


def test_a_trial_curve_is_the_mean_of_the_folds() -> None:
    x, y = _blobs(60)
    hp = HyperParams(depth=1, width=16, batch_size=32, learning_rate=1e-2)
    task = ClassificationTask(["a", "b", "c"])
    seen: list[int] = []
    result = cross_validate(
        lambda: build_model("mlp", hp, [4], 3, seed=0), x, y, hp, task, 3, CPU,
        folds=3, seed=0, options=FitOptions(), on_epoch=lambda r: seen.append(r.epoch),
    )  # fmt: skip
    assert seen == [0, 1, 2]
    assert len(result.fit.history) == 3
    assert len(result.best_epochs) == 3
    assert result.fit.status == "completed"
    assert result.fit.best_epoch is not None
    assert result.fit.history[-1].metrics["val/acc"] > 0.8


@pytest.mark.slow
def test_final_epochs_come_from_the_folds_and_the_model_trains_on_every_row() -> None:
    x, y = _blobs(60)
    hp = HyperParams(depth=1, width=16, batch_size=32, learning_rate=1e-2)
    task = ClassificationTask(["a", "b", "c"])
    epochs, _folds, rule = epochs_from_folds(
        lambda: build_model("mlp", hp, [4], 3, seed=0), x, y, hp, task, 12, CPU,
        folds=3, seed=0, patience=2, options=FitOptions(),
    )  # fmt: skip
    assert epochs is not None
    model = build_model("mlp", hp, [4], 3, seed=0)
    result = fit_all_rows(model, x, y, hp, task, epochs, CPU, seed=0, options=FitOptions())
    assert result.status == "completed"
    assert result.best_epoch == len(result.history) - 1  # no early stopping: the last epoch is kept
    assert f"small data: {len(result.history)} epochs on the 60 training and validation rows" in rule
    assert "median of the best epochs of 3 folds" in rule
    assert result.history[-1].val_loss is None  # no held-out row was left to validate on


def test_depth_zero_builds_a_linear_model_that_trains() -> None:
    hp = HyperParams(depth=0, dropout=0.3, batch_norm=True, learning_rate=3e-2, batch_size=32)
    model = build_model("mlp", hp, [4], 3, seed=0)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear) == 1
    assert linear[0].in_features == 4
    x, y = _blobs()
    task = ClassificationTask(["a", "b", "c"])
    feed = make_train_loader(x, y, hp, task, seed=0)
    result = fit(model, feed, make_eval_loader(x, y, batch_size=64, task=task), hp, 8, CPU)
    assert result.history[-1].metrics["val/acc"] > 0.9
    cnn = build_model("cnn", HyperParams(depth=0), [1, 8, 8], 10, seed=0)
    assert cnn(torch.zeros(2, 64)).shape == (2, 10)
    assert [m.in_features for m in cnn.modules() if isinstance(m, torch.nn.Linear)] == [64]


def test_the_default_space_reaches_a_linear_model_and_strong_weight_decay(tmp_path: Path) -> None:
    space = PipelineConfig().space
    assert space.rebalance.choices == ["auto"]
    assert space.depth.low == 0  # type: ignore[union-attr]
    assert space.weight_decay.high == pytest.approx(0.1)  # type: ignore[union-attr]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_skewed_run_resolves_a_balanced_objective_end_to_end(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path,
        "data.source=builtin:synthetic_imbalanced",
        "data.synthetic.class_weights=[0.94, 0.06]",
        "data.synthetic.n_samples=600",
        "sanity.lr_range_test=false",
        "coarse.n_trials=2",
        "refine.n_trials=1",
        "refine.warm_start=1",
        "refine.narrowing.top_k=1",
        "final.max_epochs=2",
        "training.max_batches_per_epoch=3",
    )
    assert config.search.objective == "auto"
    result = tune_pipeline(config)
    assert result.status == "completed"
    defaults = result.sample.defaults
    assert defaults is not None
    assert defaults.skewed
    assert defaults.imbalance_ratio is not None
    assert defaults.imbalance_ratio > 10
    assert (defaults.objective, defaults.champion_metric, defaults.cv_folds) == ("val_loss", "balanced_accuracy", 1)
    assert defaults.balanced_val_loss
    assert result.coarse is not None
    assert (result.coarse.objective, result.coarse.direction) == ("val_loss", "minimize")
    assert {t.hyperparams.rebalance for t in result.coarse.trials} == {"class_weights"}
    assert result.final is not None
    assert result.final.registry is not None
    assert result.final.registry.metric_name == "balanced_accuracy"
