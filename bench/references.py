"""The two references a practitioner checks first, on the same preprocessed splits as every other row: a
class-weighted logistic regression (ridge for regression) and scikit-learn's HistGradientBoosting, each
with its own small grid chosen on the validation split and then scored once on the test split.

They train on the full training split (the final-stage rows) and read no epoch budget: the budget
columns of their rows are 0.
"""

import time
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, r2_score
from threadpoolctl import threadpool_limits

from bench.datasets import BenchData
from bench.outcome import MethodOutcome
from stagetune.task.regression import RegressionTask

LINEAR = "logistic/ridge"
BOOSTING = "hist-gradient-boosting"
REFERENCES = (LINEAR, BOOSTING)

C_GRID = (0.01, 0.1, 1.0, 10.0)
ALPHA_GRID = (0.1, 1.0, 10.0, 100.0)
HGB_GRID = ({"learning_rate": 0.1, "max_leaf_nodes": 31}, {"learning_rate": 0.05, "max_leaf_nodes": 15})


def predicted_shares(predicted: np.ndarray, num_classes: int) -> list[float]:
    """Share of the test rows predicted as each class."""
    counts = np.bincount(np.asarray(predicted, dtype=np.int64), minlength=num_classes)
    return (counts / max(1, counts.sum())).round(4).tolist()


def _regression(data: BenchData) -> bool:
    return isinstance(data.task, RegressionTask)


def _score(data: BenchData, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The data set's test metric (R², balanced accuracy or accuracy) of predictions."""
    if _regression(data):
        return float(r2_score(y_true, y_pred))
    if data.spec.metric == "accuracy":
        return float(accuracy_score(y_true, y_pred))
    return float(balanced_accuracy_score(y_true, y_pred))


def _candidates(data: BenchData, method: str, seed: int) -> list[tuple[dict[str, Any], Callable[[], Any]]]:
    """The grid of `method`: (its parameters, a factory of the unfitted model) per point."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge

    regression = _regression(data)
    if method == LINEAR:
        if regression:
            return [({"alpha": a}, partial(Ridge, alpha=a)) for a in ALPHA_GRID]
        return [({"C": c}, partial(LogisticRegression, C=c, class_weight="balanced", max_iter=2000)) for c in C_GRID]
    if regression:
        return [(dict(p), partial(HistGradientBoostingRegressor, **p, random_state=seed)) for p in HGB_GRID]
    return [
        (p | {"class_weight": w}, partial(HistGradientBoostingClassifier, **p, class_weight=w, random_state=seed))
        for p in HGB_GRID
        for w in (None, "balanced")
    ]


def _target(y: np.ndarray) -> np.ndarray:
    return y.ravel() if y.ndim == 2 and y.shape[1] == 1 else y


def run_reference(method: str, data: BenchData, seed: int) -> MethodOutcome:
    """Fit each grid point of `method` on the training split, keep the best on validation, score it on test."""
    arrays = data.arrays
    y_train, y_val, y_test = (_target(y) for y in (arrays.y_train, arrays.y_val, arrays.y_test))
    started = time.perf_counter()
    best: tuple[float, dict[str, Any], Any] | None = None
    # One thread, as every other row gets (`--threads 1`): OpenMP's spinning workers otherwise turn a
    # sub-second fit into a minute on a loaded 2-core machine.
    with threadpool_limits(limits=1):
        for params, make in _candidates(data, method, seed):
            model = make()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # lbfgs convergence warnings on the weakest C: the grid decides
                model.fit(arrays.X_train, y_train)
            value = _score(data, y_val, model.predict(arrays.X_val))
            if best is None or value > best[0]:
                best = (value, params, model)
        assert best is not None
        value, params, model = best
        predicted = model.predict(arrays.X_test)
    extra: dict[str, Any] = {"best_value": value, "params": params}
    if not _regression(data):
        extra["predicted_shares"] = predicted_shares(predicted, data.num_classes)
    seconds = time.perf_counter() - started
    return MethodOutcome(
        method=method,
        dataset=data.spec.name,
        seed=seed,
        status="ok",
        trials=len(_candidates(data, method, seed)),
        test_metric=_score(data, y_test, predicted),
        search_seconds=seconds,
        total_seconds=seconds,
        extra=extra,
    )


def reference_outcomes(data: BenchData, seed: int, methods: Sequence[str] = REFERENCES) -> list[MethodOutcome]:
    """Every reference on `data` at `seed`; a failure becomes a row saying so, not a crash of the suite."""
    rows = []
    for method in methods:
        try:
            rows.append(run_reference(method, data, seed))
        except (ValueError, RuntimeError) as error:
            rows.append(MethodOutcome(method, data.spec.name, seed, f"failed: {error}"))
    return rows
