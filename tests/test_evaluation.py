"""Test-set evaluation against scikit-learn's metrics on hand-made logits, and the confusion-matrix figure."""

import warnings
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from torch import nn

from schemas.final import TestMetrics
from stagetune.evaluation import balanced_accuracy, evaluate_classifier
from stagetune.report.figures import confusion_matrix_svg

SVG = "{http://www.w3.org/2000/svg}"

CPU = torch.device("cpu")


class FixedLogits(nn.Module):
    """A "model" that returns preset logits: row i of the input holds i, and gets logits[i]."""

    table: torch.Tensor

    def __init__(self, logits: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("table", torch.as_tensor(logits, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0].long()]


def _case(logits: np.ndarray) -> tuple[FixedLogits, np.ndarray]:
    return FixedLogits(logits), np.arange(len(logits), dtype=np.float32)[:, None]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def test_metrics_match_scikit_learn_on_known_logits() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=50)
    logits = rng.normal(size=(50, 3)) + 1.5 * np.eye(3)[y]  # mostly right, some wrong
    model, x = _case(logits)
    pred = logits.argmax(axis=1)
    assert 0.5 < np.mean(pred == y) < 1.0  # the case exercises both hits and misses

    result = evaluate_classifier(model, x, y, ["a", "b", "c"], CPU, batch_size=7)

    assert result.loss == pytest.approx(skm.log_loss(y, _softmax(logits), labels=[0, 1, 2]), rel=1e-5)
    assert result.accuracy == pytest.approx(skm.accuracy_score(y, pred))
    assert result.balanced_accuracy == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert result.macro_f1 == pytest.approx(skm.f1_score(y, pred, average="macro"))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, labels=[0, 1, 2])
    assert [r.name for r in result.per_class] == ["a", "b", "c"]
    assert [r.precision for r in result.per_class] == pytest.approx(precision)
    assert [r.recall for r in result.per_class] == pytest.approx(recall)
    assert [r.f1 for r in result.per_class] == pytest.approx(f1)
    assert [r.support for r in result.per_class] == support.tolist()
    assert result.confusion_matrix == skm.confusion_matrix(y, pred).tolist()
    assert result.n_samples == 50


def test_confusion_matrix_rows_are_true_classes() -> None:
    # true: 0, 0, 1, 2 ; predicted: 0, 1, 1, 1
    logits = np.array([[5, 0, 0], [0, 5, 0], [0, 5, 0], [0, 5, 0]], dtype=float)
    model, x = _case(logits)
    result = evaluate_classifier(model, x, np.array([0, 0, 1, 2]), ["x", "y", "z"], CPU)
    assert result.confusion_matrix == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    assert result.per_class[2].recall == 0.0
    assert result.per_class[2].support == 1


def test_imbalanced_majority_guesser_has_high_accuracy_but_balanced_accuracy_one_half() -> None:
    y = np.array([0] * 95 + [1] * 5)
    model, x = _case(np.tile([3.0, -3.0], (100, 1)))  # always class 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # class 1 is never predicted: no UndefinedMetricWarning
        result = evaluate_classifier(model, x, y, ["majority", "minority"], CPU)
    assert result.accuracy == pytest.approx(0.95)
    assert result.balanced_accuracy == pytest.approx(0.5)
    minority = result.per_class[1]
    assert (minority.precision, minority.recall, minority.f1, minority.support) == (0.0, 0.0, 0.0, 5)
    assert result.macro_f1 == pytest.approx(skm.f1_score(y, np.zeros(100, dtype=int), average="macro", zero_division=0))


def test_a_class_absent_from_test_set_and_predictions_gets_a_zero_row_but_no_macro_penalty() -> None:
    y = np.array([0, 0, 1, 1])
    logits = np.array([[4, 0, 0], [0, 4, 0], [0, 4, 0], [0, 4, 0]], dtype=float)
    model, x = _case(logits)
    result = evaluate_classifier(model, x, y, ["a", "b", "never"], CPU)
    pred = logits.argmax(axis=1)
    assert result.per_class[2].support == 0
    assert result.per_class[2].f1 == 0.0
    assert result.macro_f1 == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert result.balanced_accuracy == pytest.approx(skm.balanced_accuracy_score(y, pred))


def test_labels_outside_the_class_names_are_rejected() -> None:
    model, x = _case(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        evaluate_classifier(model, x, np.array([0, 1, 2]), ["a", "b"], CPU)


@pytest.mark.parametrize("seed", range(5))
def test_balanced_accuracy_helper_matches_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y_true = rng.choice([0, 1, 3], size=40, p=[0.7, 0.2, 0.1])  # class 2 never occurs
    y_pred = rng.integers(0, 4, size=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that y_pred holds a class absent from y_true
        expected = skm.balanced_accuracy_score(y_true, y_pred)
    assert balanced_accuracy(y_true, y_pred, num_classes=4) == pytest.approx(expected)


def test_balanced_accuracy_helper_rejects_mismatched_arrays() -> None:
    with pytest.raises(ValueError, match="one length"):
        balanced_accuracy(np.array([0, 1]), np.array([0]), num_classes=2)


def _metrics() -> TestMetrics:
    model, x = _case(np.array([[5, 0, 0], [0, 5, 0], [0, 5, 0], [0, 0, 5], [0, 0, 5]], dtype=float))
    return evaluate_classifier(model, x, np.array([0, 0, 1, 2, 2]), ["cat", "dog", "emu"], CPU)


def test_confusion_matrix_svg_annotates_counts_names_classes_and_shades_by_row_share() -> None:
    result = _metrics()
    root = ET.fromstring(confusion_matrix_svg(result))
    group = next(g for g in root.iter(f"{SVG}g") if g.attrib.get("class") == "cells")
    cells = list(group.iter(f"{SVG}rect"))
    counts = [str(v) for row in result.confusion_matrix for v in row]

    assert [t.text for t in group.iter(f"{SVG}text")] == counts  # row by row
    assert {"cat", "dog", "emu", "predicted class", "true class"} <= {t.text for t in root.iter(f"{SVG}text")}
    # Row 0 is split 1/1 between cat and dog: the same shade; the empty cell is white.
    shades = [c.attrib["fill"] for c in cells[:9]]
    assert shades[0] == shades[1] != shades[2] == "#ffffff"
    assert shades[8] == "#08306b"  # emu: all of its row, the darkest blue
