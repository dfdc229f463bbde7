"""Test-set evaluation through the Task; for a classifier: accuracy, balanced accuracy, per-class report, confusion
matrix (regression metrics live in stagetune.task.regression).

Plain PyTorch, numpy and scikit-learn: nothing here knows about a tuner or a tracker. Classes that are
never predicted (or absent from the test set) get 0 for the undefined precision/recall/F1 instead of
a warning per call (scikit-learn's zero_division=0).
"""

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support
from torch import nn

from schemas.final import ClassReport, TestMetrics
from stagetune.data.source import Features
from stagetune.task.base import AnyTestMetrics, Task
from stagetune.task.classification import ClassificationTask
from stagetune.training.loaders import make_eval_loader
from stagetune.training.loop import evaluate

# Cells whose row share is above this get white text (the colour map is dark there).


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Mean recall over the classes that occur in `y_true` (scikit-learn's balanced_accuracy_score).

    Labels are integers in [0, num_classes); a class absent from `y_true` is left out of the mean.
    """
    true = np.asarray(y_true, dtype=np.int64)
    pred = np.asarray(y_pred, dtype=np.int64)
    if true.shape != pred.shape or true.ndim != 1 or len(true) == 0:
        raise ValueError(
            f"y_true and y_pred must be non-empty 1-d arrays of one length, got {true.shape}, {pred.shape}"
        )
    support = np.bincount(true, minlength=num_classes)
    hits = np.bincount(true[true == pred], minlength=num_classes)
    present = support > 0
    return float(np.mean(hits[present] / support[present]))


def evaluate_on_test(
    model: nn.Module, x: Features, y: np.ndarray, task: Task, device: torch.device, batch_size: int = 1024
) -> AnyTestMetrics:
    """Run `model` once in eval mode over (x, y) on `device` (the model is moved there) and score it with `task`."""
    if len(y) == 0:
        raise ValueError("the test split is empty")
    model.to(device)
    stats = evaluate(model, make_eval_loader(x, y, batch_size, task), task, device, return_outputs=True)
    assert stats.outputs is not None
    assert stats.targets is not None
    return task.test_metrics(stats.outputs, stats.targets, stats.loss)


def evaluate_classifier(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    class_names: Sequence[str],
    device: torch.device,
    batch_size: int = 1024,
) -> TestMetrics:
    """`evaluate_on_test` for a classifier over `class_names`.

    `y` holds integer labels in [0, len(class_names)); the loss is plain mean cross-entropy.
    """
    num_classes = len(class_names)
    labels = np.asarray(y, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("the test split is empty")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}) for {num_classes} class names")
    metrics = evaluate_on_test(model, x, labels, ClassificationTask(class_names), device, batch_size)
    assert isinstance(metrics, TestMetrics)
    return metrics


def classification_test_metrics(
    labels: np.ndarray, predicted: np.ndarray, loss: float, class_names: Sequence[str]
) -> TestMetrics:
    """Accuracy, balanced accuracy, macro F1, per-class report and confusion matrix of predicted classes."""
    names = [str(name) for name in class_names]
    num_classes = len(names)
    all_labels = list(range(num_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=all_labels, zero_division=0
    )
    # Macro F1 over the classes that are true or predicted (scikit-learn's default label set), so a
    # class missing from the test split and never predicted does not count as an F1 of 0.
    seen = sorted(set(labels.tolist()) | set(predicted.tolist()))
    per_class = [
        ClassReport(name=name, precision=float(p), recall=float(r), f1=float(f), support=int(s))
        for name, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)
    ]
    return TestMetrics(
        loss=loss,
        accuracy=float(np.mean(predicted == labels)),
        balanced_accuracy=balanced_accuracy(labels, predicted, num_classes),
        macro_f1=float(f1_score(labels, predicted, labels=seen, average="macro", zero_division=0)),
        per_class=per_class,
        confusion_matrix=confusion_matrix(labels, predicted, labels=all_labels).tolist(),
        class_names=names,
        n_samples=len(labels),
    )
