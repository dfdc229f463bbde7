"""Regression beside classification: task detection, metrics, target scaling, Stage 1 and the sanity gate."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from sklearn.datasets import load_diabetes
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

from schemas.config import TASK_CHAMPION_METRICS, TASK_OBJECTIVES, PipelineConfig, SanityConfig
from schemas.hyperparams import HyperParams
from schemas.results import EpochRecord
from stagetune.data.stage import load_stage_arrays, run_sample_stage
from stagetune.data.targets import MAX_CLASSES_FOR_AUTO, detect_task
from stagetune.errors import InputError
from stagetune.sanity import run_sanity_gate
from stagetune.task import task_for
from stagetune.task.registry import TASKS
from stagetune.task.regression import RegressionTask, quantile_bins, regression_scores

CPU = torch.device("cpu")


def frame(**columns: object) -> pd.DataFrame:
    return pd.DataFrame(columns)


@pytest.mark.parametrize(
    ("column", "task", "reason"),
    [
        (["a", "b", "a", "c"] * 10, "classification", "non-numeric"),
        ([True, False] * 20, "classification", "boolean"),
        (list(range(5)) * 8, "classification", "integer with 5 distinct"),
        (list(range(40)), "regression", "integer with 40 distinct"),
        (np.linspace(0, 1, 40).tolist(), "regression", "non-integer"),
        ([0.0, 1.0, 2.0, np.nan] * 10, "classification", "integer with 3 distinct"),  # ints read as floats (a NaN)
    ],
)
def test_auto_detection_rules(column: list[object], task: str, reason: str) -> None:
    detected, why = detect_task(frame(y=column), ["y"], "auto")
    assert detected == task
    assert reason in why


def test_detection_threshold_and_multi_output_and_override() -> None:
    at_limit = frame(y=list(range(MAX_CLASSES_FOR_AUTO)) * 2)
    assert detect_task(at_limit, ["y"], "auto")[0] == "classification"
    above = frame(y=list(range(MAX_CLASSES_FOR_AUTO + 1)) * 2)
    assert detect_task(above, ["y"], "auto")[0] == "regression"
    assert detect_task(frame(a=[1.5, 2.5], b=[1.0, 3.0]), ["a", "b"], "auto")[0] == "regression"
    # The override wins over what the column looks like, and says so.
    assert detect_task(at_limit, ["y"], "regression") == ("regression", "set in data.task")
    assert detect_task(frame(y=[0.5, 1.5]), ["y"], "classification")[0] == "classification"


def test_regression_metrics_equal_scikit_learns() -> None:
    rng = np.random.default_rng(3)
    y_true = rng.normal(10, 5, size=(50, 3))
    y_pred = y_true + rng.normal(0, 2, size=(50, 3))
    rmse, mae, r2 = regression_scores(y_true, y_pred)
    np.testing.assert_allclose(rmse, root_mean_squared_error(y_true, y_pred, multioutput="raw_values"))
    np.testing.assert_allclose(mae, mean_absolute_error(y_true, y_pred, multioutput="raw_values"))
    np.testing.assert_allclose(r2, r2_score(y_true, y_pred, multioutput="raw_values"))
    # The task's metrics: outputs and targets standardised, the figures in original units (uniform average).
    mean, std = y_true.mean(axis=0), y_true.std(axis=0)
    task = RegressionTask(["a", "b", "c"], mean.tolist(), std.tolist())
    scaled = task.eval_metrics(torch.as_tensor((y_pred - mean) / std), torch.as_tensor((y_true - mean) / std))
    assert scaled["val/rmse"] == pytest.approx(root_mean_squared_error(y_true, y_pred))
    assert scaled["val/mae"] == pytest.approx(mean_absolute_error(y_true, y_pred))
    assert scaled["val/r2"] == pytest.approx(r2_score(y_true, y_pred))
    test = task.test_metrics(torch.as_tensor((y_pred - mean) / std), torch.as_tensor((y_true - mean) / std), 0.1)
    assert [o.name for o in test.per_output] == ["a", "b", "c"]
    assert test.per_output[1].r2 == pytest.approx(r2_score(y_true[:, 1], y_pred[:, 1]))
    assert test.summary_metrics()["b.rmse"] == pytest.approx(root_mean_squared_error(y_true[:, 1], y_pred[:, 1]))


def test_training_metrics_from_batch_sums_match_the_whole_epoch() -> None:
    rng = np.random.default_rng(4)
    y = rng.normal(size=(40, 2)).astype(np.float32)
    out = y + rng.normal(0, 0.5, size=(40, 2)).astype(np.float32)
    task = RegressionTask(["a", "b"], [100.0, -3.0], [10.0, 2.0])
    sums = sum(task.batch_sums(torch.as_tensor(out[i : i + 7]), torch.as_tensor(y[i : i + 7])) for i in range(0, 40, 7))
    metrics = task.train_metrics(torch.as_tensor(sums), 40)
    original_true, original_pred = y * [10.0, 2.0] + [100.0, -3.0], out * [10.0, 2.0] + [100.0, -3.0]
    assert metrics["train/rmse"] == pytest.approx(root_mean_squared_error(original_true, original_pred), rel=1e-5)
    assert metrics["train/r2"] == pytest.approx(r2_score(y, out), rel=1e-5)


def test_target_scaling_round_trips_on_diabetes(tmp_path: Path) -> None:
    config = PipelineConfig.model_validate({"data": {"source": "builtin:diabetes"}})
    result = run_sample_stage(config, tmp_path)
    assert (result.task, result.num_classes, result.target_names) == ("regression", 0, ["target"])
    assert "214 distinct" in result.task_reason
    arrays = load_stage_arrays(result)
    assert arrays.y_train.mean() == pytest.approx(0.0, abs=1e-5)
    assert arrays.y_train.std() == pytest.approx(1.0, abs=1e-5)
    task = task_for(result)
    assert isinstance(task, RegressionTask)
    restored = np.concatenate([task.to_original(y) for y in (arrays.y_train, arrays.y_val, arrays.y_test)])
    np.testing.assert_allclose(np.sort(restored[:, 0]), np.sort(load_diabetes().target), rtol=1e-5)
    # Stratified by target bins: every split spans the range of the target.
    for y in (arrays.y_val, arrays.y_test):
        assert y.min() < -1.0
        assert y.max() > 1.0


def test_rows_without_a_target_are_dropped_and_counted(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 120
    table = pd.DataFrame({"x": rng.normal(size=n), "colour": rng.choice(["red", "blue"], n)})
    table["price"] = np.exp(table["x"] + rng.normal(0, 0.2, n))  # skewed
    table.loc[[3, 50, 77], "price"] = np.nan
    path = tmp_path / "prices.csv"
    table.to_csv(path, index=False)
    config = PipelineConfig.model_validate({"data": {"source": str(path), "target": "price"}})
    result = run_sample_stage(config, tmp_path / "out")
    assert result.task == "regression"
    assert result.dropped_label_rows == 3
    assert result.n_train + result.n_val + result.n_test == n - 3
    assert any("3 row(s)" in w for w in result.warnings)


def test_multi_output_synthetic_regression(tmp_path: Path) -> None:
    config = PipelineConfig.model_validate(
        {"data": {"source": "builtin:synthetic_regression", "synthetic_regression": {"n_outputs": 3, "n_samples": 300}}}
    )
    result = run_sample_stage(config, tmp_path)
    assert result.target_names == ["target0", "target1", "target2"]
    assert task_for(result).output_size == 3
    assert load_stage_arrays(result).y_train.shape[1] == 3


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sample": {"rebalance": "oversample"}}, "sample.rebalance"),
        ({"sample": {"classes": ["1", "2"]}}, "sample.classes"),
        ({"space": {"rebalance": {"choices": ["none", "class_weights"]}}}, "space.rebalance"),
        ({"search": {"objective": "val_acc"}}, "search.objective"),
        ({"training": {"loss": "cross_entropy"}}, "training.loss"),
    ],
)
def test_class_settings_for_a_regression_target_are_input_errors(
    tmp_path: Path, changes: dict[str, object], field: str
) -> None:
    config = PipelineConfig.model_validate({"data": {"source": "builtin:diabetes"}, **changes})
    with pytest.raises(InputError) as caught:
        run_sample_stage(config, tmp_path)
    assert caught.value.field == field
    assert not list(tmp_path.iterdir())  # nothing written


def test_regression_objective_for_classification_is_an_input_error(tmp_path: Path) -> None:
    config = PipelineConfig.model_validate({"search": {"objective": "val_r2"}})  # digits: classification
    with pytest.raises(InputError) as caught:
        run_sample_stage(config, tmp_path)
    assert caught.value.field == "search.objective"
    # With the task set explicitly, the config itself is refused.
    with pytest.raises(ValidationError, match="does not fit a classification task"):
        PipelineConfig.model_validate({"data": {"task": "classification"}, "search": {"objective": "val_r2"}})
    with pytest.raises(ValidationError, match="champion_metric"):
        PipelineConfig.model_validate({"data": {"task": "regression"}, "final": {"champion_metric": "accuracy"}})


def test_tasks_and_config_tables_agree() -> None:
    for name, task in TASKS.items():
        assert {k: v == "minimize" for k, v in task.objectives.items()} == TASK_OBJECTIVES[name]
        assert {k: v == "minimize" for k, v in task.champion_metrics.items()} == TASK_CHAMPION_METRICS[name]
    regression = RegressionTask(["y"], [0.0], [1.0])
    assert regression.champion_metric("auto") == ("rmse", "minimize")
    assert regression.champion_metric("r2") == ("r2", "maximize")
    with pytest.raises(ValueError, match="accuracy"):
        regression.champion_metric("accuracy")
    config = PipelineConfig.model_validate({"data": {"task": "regression"}, "search": {"objective": "val_rmse"}})
    assert config.search.direction == "minimize"


def test_quantile_bins_keep_enough_rows_per_bin() -> None:
    values = np.concatenate([np.zeros(100), np.linspace(1, 2, 200)])  # heavy ties at 0
    codes = quantile_bins(values)
    assert codes.max() >= 3
    assert np.bincount(codes).min() >= 3


def test_stored_epoch_records_with_accuracy_fields_read_back() -> None:
    old = {"epoch": 0, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.1, "val_acc": 0.4, "lr": 1e-3, "seconds": 1}
    record = EpochRecord.model_validate(old)
    assert record.metrics == {"train/acc": 0.5, "val/acc": 0.4}
    assert (record.train_acc, record.val_acc, record.metric("val_acc")) == (0.5, 0.4, 0.4)


@pytest.fixture(scope="module")
def friedman(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray, RegressionTask]:
    config = PipelineConfig.model_validate(
        {"data": {"source": "builtin:synthetic_regression", "synthetic_regression": {"n_samples": 600}}}
    )
    result = run_sample_stage(config, tmp_path_factory.mktemp("friedman"))
    arrays = load_stage_arrays(result)
    task = task_for(result)
    assert isinstance(task, RegressionTask)
    return arrays.X_train_sampled, arrays.y_train_sampled, task


def _gate(data: tuple[np.ndarray, np.ndarray, RegressionTask], **kwargs: object):  # type: ignore[no-untyped-def]
    x, y, task = data
    return run_sanity_gate(
        x,
        y,
        hp=HyperParams(),
        input_shape=[x.shape[1]],
        num_classes=task,
        cfg=SanityConfig(overfit_max_steps=300, lr_range_steps=30),
        device=CPU,
        seed=0,
        grad_clip_norm=5.0,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.slow
def test_sanity_gate_passes_a_correct_regressor(friedman: tuple[np.ndarray, np.ndarray, RegressionTask]) -> None:
    result = _gate(friedman, family="mlp")
    assert result.passed, result.diagnoses
    assert result.task == "regression"
    # MSE of a near-zero output on standardised targets: about 1.
    assert result.expected_initial_loss == pytest.approx(1.0, abs=0.15)
    assert abs(result.initial_loss - result.expected_initial_loss) < 0.5 * result.expected_initial_loss
    assert result.overfit_train_acc >= 0.99 or result.overfit_losses[-1] < 0.01 * result.overfit_losses[0]
    assert result.lr_suggestion is not None


@pytest.mark.slow
def test_sanity_gate_fails_a_regressor_that_ignores_its_input(
    friedman: tuple[np.ndarray, np.ndarray, RegressionTask],
) -> None:
    result = _gate(friedman, family="custom", import_path="tests.broken_models:input_ignoring")
    assert not result.passed
    codes = {d.code for d in result.diagnoses}
    assert codes == {"flat_loss"}
    assert "train R²" in result.diagnoses[0].message


@pytest.mark.slow
def test_sanity_gate_fails_a_scaled_regression_head(friedman: tuple[np.ndarray, np.ndarray, RegressionTask]) -> None:
    result = _gate(friedman, family="custom", import_path="tests.broken_models:scaled_logits")
    assert "initial_loss_off" in {d.code for d in result.diagnoses}


def test_the_loss_is_a_tunable_choice_judged_by_a_metric() -> None:
    import optuna

    from stagetune.search.space import suggest_hyperparams
    from stagetune.training.loaders import make_train_loader

    space = {"loss": {"kind": "categorical", "choices": ["mse", "huber", "l1"]}}
    with pytest.raises(ValidationError, match="val_loss compares different losses"):
        PipelineConfig.model_validate(
            {"data": {"source": "builtin:diabetes"}, "space": space, "search": {"objective": "val_loss"}}
        )
    config = PipelineConfig.model_validate(
        {"data": {"source": "builtin:diabetes"}, "space": space, "search": {"objective": "val_rmse"}}
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = {suggest_hyperparams(study.ask(), config.space, config.model).loss for _ in range(30)}
    assert drawn == {"mse", "huber", "l1"}
    task = RegressionTask(["y"], [0.0], [1.0])
    x, y = np.zeros((8, 2), dtype=np.float32), np.arange(8, dtype=np.float32)
    feed = make_train_loader(x, y, HyperParams(loss="huber"), task, seed=0)
    assert isinstance(feed.task, RegressionTask)
    assert feed.task.loss == "huber"
    assert isinstance(feed.loss_fn(CPU), torch.nn.HuberLoss)
    assert make_train_loader(x, y, HyperParams(), task, seed=0).task is task


def test_overfit_ceiling_accounts_for_identical_inputs_with_different_targets() -> None:
    task = RegressionTask(["y"], [0.0], [1.0])
    x = np.array([[0.0], [0.0], [1.0], [2.0]], dtype=np.float32)
    y = np.array([0.0, 2.0, 1.0, 3.0], dtype=np.float32)
    # Best memorising fit predicts 1.0 for both x=0 rows: SSE 2 of SST 5.
    assert task.overfit_ceiling(x, y) == pytest.approx(1 - 2 / 5)
    assert task.overfit_ceiling(np.arange(4, dtype=np.float32)[:, None], y) == 1.0


def _regression_history(train_r2: list[float], val_r2: list[float]) -> list[EpochRecord]:
    return [
        EpochRecord(
            epoch=i,
            train_loss=1 - t,
            val_loss=1 - v,
            metrics={"train/rmse": 1.0, "train/r2": t, "val/rmse": 1.0, "val/mae": 1.0, "val/r2": v},
            lr=1e-3,
            seconds=0.1,
        )
        for i, (t, v) in enumerate(zip(train_r2, val_r2, strict=True))
    ]


def test_curve_diagnosis_reads_regression_curves() -> None:
    from stagetune.diagnosis import diagnose_curves

    # MSE on standardised targets starts at 1: a loss share of it is 1 - R², as the history builds it.
    overfit = diagnose_curves(_regression_history([0.8, 0.9, 0.97], [0.7, 0.72, 0.71]), "completed", reference_loss=1)
    assert overfit.code == "overfitting"
    assert "validation loss 0.29 vs training loss 0.03" in overfit.message
    assert "26% of the reference loss 1" in overfit.message
    underfit = diagnose_curves(_regression_history([0.2, 0.3, 0.3], [0.2, 0.3, 0.3]), "completed", reference_loss=1)
    assert underfit.code == "underfitting"
    assert "final training loss and validation loss 0.7 and 0.7 are 70% and 70% of the reference loss 1" in (
        underfit.message
    )
    fine = diagnose_curves(_regression_history([0.8, 0.85, 0.85], [0.8, 0.84, 0.84]), "completed", reference_loss=1)
    assert fine.code == "ok"
