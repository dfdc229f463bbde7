"""bench/fidelity.py's scoring (known inputs, known answers): the e-epoch score read off a longer curve, the
rank statistics, and successive halving's survivors and cost. No training."""

import math

import numpy as np
import pytest

from bench.fidelity import oriented, prefix_best, selection_quality, spearman, successive_halving


def test_an_e_epoch_score_is_the_best_of_the_curves_first_e_epochs() -> None:
    curve = [0.9, 0.7, math.nan, 0.8, 0.5]
    assert prefix_best(curve, 1, lower_is_better=True) == 0.9
    assert prefix_best(curve, 4, lower_is_better=True) == 0.7
    assert prefix_best([0.1, 0.4, 0.3], 3, lower_is_better=False) == 0.4
    assert math.isnan(prefix_best([math.nan, math.nan], 2, lower_is_better=True))


def test_failed_configurations_rank_last_and_losses_are_flipped() -> None:
    scores = oriented([0.3, math.nan, 0.1], lower_is_better=True)
    assert list(np.argsort(-scores)) == [2, 0, 1]


def test_spearman_and_selection_quality() -> None:
    truth = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    assert spearman(truth, truth) == pytest.approx(1.0)
    assert spearman(-truth, truth) == pytest.approx(-1.0)
    assert math.isnan(spearman(np.ones(6), truth))
    coarse = np.array([0.0, 5.0, 4.0, 3.0, 2.0, 1.0])  # the true best ranked last
    test = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    quality = selection_quality(coarse, truth, test)
    assert quality["best_in_top5"] == 0.0
    assert quality["best_in_top8"] == 1.0
    assert quality["overlap@3"] == pytest.approx(2 / 3)
    assert quality["regret"] == pytest.approx(0.9 - 0.8)


def test_successive_halving_promotes_the_best_third_and_counts_its_epochs() -> None:
    # Nine configurations; configuration i's loss after every epoch is i / 10, except that configuration 8
    # is worst at epoch 1 and best later: halving drops it at the first rung.
    curves = [[i / 10] * 9 for i in range(9)]
    curves[8] = [0.95, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    scores, spent = successive_halving(curves, [1, 3, 9], lower_is_better=True)
    assert spent == 9 * 1 + 3 * 2 + 1 * 6
    order = list(np.argsort(-scores, kind="stable"))
    assert order[0] == 0  # the only configuration trained to the last rung
    assert set(order[1:3]) == {1, 2}  # dropped at the second rung, above every first-rung drop
    assert order[-1] == 8
