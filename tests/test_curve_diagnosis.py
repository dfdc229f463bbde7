"""Learning-curve diagnosis on synthetic histories: one per code, the precedence, the stage summary."""

import math

import pytest

from schemas.final import CurveDiagnosisSettings
from schemas.results import EpochRecord
from stagetune.diagnosis import diagnose_curves, summarise_diagnoses

# (train_loss, train_acc, val_loss, val_acc) per epoch
Row = tuple[float, float, float | None, float | None]


def history(*rows: Row) -> list[EpochRecord]:
    return [
        EpochRecord(epoch=i, train_loss=tl, train_acc=ta, val_loss=vl, val_acc=va, lr=1e-3, seconds=0.1)
        for i, (tl, ta, vl, va) in enumerate(rows)
    ]


OVERFIT_GAP = history((1.0, 0.80, 0.9, 0.75), (0.3, 0.95, 0.6, 0.82), (0.05, 0.99, 0.62, 0.81))
OVERFIT_VAL_RISE = history((1.0, 0.80, 0.60, 0.80), (0.5, 0.90, 0.40, 0.88), (0.3, 0.93, 0.50, 0.88))
UNDERFIT = history((1.2, 0.55, 1.2, 0.55), (1.1, 0.60, 1.15, 0.58), (1.1, 0.60, 1.15, 0.58))
UNDERFIT_STILL_FALLING = history((1.2, 0.55, 1.2, 0.55), (1.0, 0.60, 1.0, 0.59))
STILL_FALLING = history((0.5, 0.90, 0.40, 0.90), (0.3, 0.95, 0.30, 0.93), (0.2, 0.96, 0.25, 0.94))
PLATEAU = history((0.5, 0.90, 0.40, 0.90), (0.3, 0.95, 0.20, 0.94), (0.25, 0.96, 0.201, 0.94))
BEST_LAST_SLOWLY = history((0.5, 0.90, 0.40, 0.90), (0.3, 0.95, 0.200, 0.94), (0.29, 0.95, 0.199, 0.94))


def test_diverged_status_wins_over_everything_even_without_epochs() -> None:
    assert diagnose_curves([], "diverged").code == "diverged"
    result = diagnose_curves(OVERFIT_GAP, "diverged")
    assert result.code == "diverged"
    assert "10x" in result.next_action
    assert "004_e9930d7a8081840b.txt" in result.rule_source


def test_exploding_or_non_finite_loss_is_diverged_even_if_status_says_completed() -> None:
    exploding = history((1.0, 0.5, 1.0, 0.5), (2.0, 0.4, 2.5, 0.3), (3.5, 0.3, 4.0, 0.3))
    result = diagnose_curves(exploding, "completed")
    assert result.code == "diverged"
    assert "1 to 3.5" in result.message
    nan_val = history((1.0, 0.5, 1.0, 0.5), (0.9, 0.6, math.nan, 0.3))
    assert diagnose_curves(nan_val, "completed").code == "diverged"


@pytest.mark.parametrize("rows", [[], history((1.0, 0.5, 1.0, 0.5))])
def test_fewer_than_two_epochs_are_insufficient(rows: list[EpochRecord]) -> None:
    result = diagnose_curves(rows, "stopped")
    assert result.code == "insufficient"
    assert f"only {len(rows)} epoch" in result.message


def test_train_validation_accuracy_gap_is_overfitting_with_the_numbers() -> None:
    result = diagnose_curves(OVERFIT_GAP, "completed")
    assert result.code == "overfitting"
    assert "0.990" in result.message
    assert "0.810" in result.message
    assert "0.180" in result.message
    assert "dropout" in result.next_action
    assert "000_721f12b7d3a5a9e6.txt" in result.rule_source
    assert diagnose_curves(OVERFIT_GAP, "completed", CurveDiagnosisSettings(overfit_gap=0.3)).code != "overfitting"


def test_validation_loss_rising_while_training_loss_falls_is_overfitting() -> None:
    result = diagnose_curves(OVERFIT_VAL_RISE, "completed")
    assert result.code == "overfitting"
    assert "25%" in result.message
    assert "0.4" in result.message
    assert diagnose_curves(OVERFIT_VAL_RISE, "completed", CurveDiagnosisSettings(val_rise=0.3)).code != "overfitting"


def test_validation_loss_rising_while_training_loss_rises_too_is_not_overfitting() -> None:
    both_rise = history((0.5, 0.95, 0.40, 0.94), (0.4, 0.95, 0.30, 0.94), (0.6, 0.95, 0.50, 0.94))
    assert diagnose_curves(both_rise, "completed").code != "overfitting"


def test_low_train_and_validation_accuracy_is_underfitting() -> None:
    result = diagnose_curves(UNDERFIT, "completed")
    assert result.code == "underfitting"
    assert "0.600" in result.message
    assert "0.580" in result.message
    assert "capacity" in result.next_action
    assert "more epochs" not in result.message  # the loss had flattened


def test_underfitting_outranks_not_converged_and_mentions_it() -> None:
    result = diagnose_curves(UNDERFIT_STILL_FALLING, "completed")
    assert result.code == "underfitting"
    assert "more epochs may help too" in result.message


def test_overfitting_outranks_underfitting() -> None:
    low_and_gapped = history((1.0, 0.6, 1.0, 0.5), (0.8, 0.80, 1.0, 0.60), (0.8, 0.80, 1.0, 0.60))
    assert diagnose_curves(low_and_gapped, "completed").code == "overfitting"
    assert diagnose_curves(low_and_gapped, "completed", CurveDiagnosisSettings(overfit_gap=0.25)).code == (
        "underfitting"
    )


def test_validation_loss_still_falling_is_not_converged() -> None:
    result = diagnose_curves(STILL_FALLING, "early_stopped")
    assert result.code == "not_converged"
    assert "16.7%" in result.message
    assert "0.3 -> 0.25" in result.message
    assert "more epochs" in result.next_action


def test_best_validation_loss_at_the_last_epoch_of_a_completed_run_is_not_converged() -> None:
    assert diagnose_curves(BEST_LAST_SLOWLY, "completed").code == "not_converged"
    # A run stopped by the caller did not use all its epochs: a 0.5% drop is no reason to ask for more.
    assert diagnose_curves(BEST_LAST_SLOWLY, "stopped").code == "ok"


def test_training_loss_is_used_when_there_is_no_validation() -> None:
    no_val = history((0.5, 0.95, None, None), (0.3, 0.96, None, None))
    assert diagnose_curves(no_val, "completed").code == "not_converged"


def test_a_plateaued_good_run_is_ok() -> None:
    result = diagnose_curves(PLATEAU, "completed")
    assert result.code == "ok"
    assert "0.960" in result.message


def test_summary_counts_codes_and_names_the_most_common_problem() -> None:
    codes = ["overfitting", "ok", "overfitting", "underfitting", "insufficient", "overfitting"]
    summary = summarise_diagnoses(codes)
    assert summary.counts == {"overfitting": 3, "underfitting": 1, "ok": 1, "insufficient": 1}
    assert summary.dominant == "overfitting"
    assert summary.message.startswith("3 of 6 run(s) overfitting")
    assert "regularise" in summary.message
    assert "1 underfitting" in summary.message


def test_summary_breaks_ties_by_precedence() -> None:
    assert summarise_diagnoses(["not_converged", "underfitting"]).dominant == "underfitting"
    assert summarise_diagnoses(["underfitting", "diverged"]).dominant == "diverged"


def test_summary_without_problems_has_no_dominant() -> None:
    summary = summarise_diagnoses(["ok", "ok", "insufficient"])
    assert summary.dominant is None
    assert summary.message == "no problem diagnosed in 3 run(s) (1 too short to read)"
    assert summarise_diagnoses([]).message == "no runs to diagnose"


def test_summary_rejects_unknown_codes() -> None:
    with pytest.raises(ValueError, match="overfit"):
        summarise_diagnoses(["overfit"])
