"""Learning-curve diagnosis on synthetic histories, read on train vs validation loss for both tasks.

Each curve shape is written in shares of the reference loss (the loss a fresh model starts from) and
built twice: as a 10-class classification history (reference ln 10, with accuracies) and as a
standardised MSE regression history (reference 1, with R²). Every rule must read the same on both.
"""

import math

import numpy as np
import pytest

from schemas.final import CurveDiagnosisSettings
from schemas.hyperparams import HyperParams
from schemas.results import EpochRecord
from stagetune.diagnosis import diagnose_curves, summarise_diagnoses
from stagetune.stages.trial import TrialData, reference_loss
from stagetune.task.classification import ClassificationTask
from stagetune.task.regression import RegressionTask

LN10 = math.log(10)
REFERENCES = {"classification": LN10, "regression": 1.0}
TASKS = list(REFERENCES)
# (train share, validation share or None) of the reference loss per epoch
Shape = list[tuple[float, float | None]]


def build(task: str, shape: Shape, scores: list[tuple[float, float]] | None = None) -> list[EpochRecord]:
    """A history of `task` following `shape`; `scores` (train, val) overrides the accuracy/R² it would imply."""
    ref = REFERENCES[task]
    records = []
    for i, (train, val) in enumerate(shape):
        t_score, v_score = scores[i] if scores else (1 - train / 2, 1 - (val if val is not None else train) / 2)
        names = ("train/acc", "val/acc") if task == "classification" else ("train/r2", "val/r2")
        metrics = {names[0]: t_score} | ({} if val is None else {names[1]: v_score})
        records.append(
            EpochRecord(
                epoch=i,
                train_loss=train * ref,
                val_loss=None if val is None else val * ref,
                metrics=metrics,
                lr=1e-3,
                seconds=0.1,
            )
        )
    return records


def diagnose(task: str, shape: Shape, status: str = "completed", **settings: float) -> tuple[str, str, str]:
    result = diagnose_curves(
        build(task, shape), status, CurveDiagnosisSettings(**settings), reference_loss=REFERENCES[task]
    )
    return result.code, result.message, result.rule_source


OVERFIT_GAP: Shape = [(0.9, 0.85), (0.3, 0.45), (0.05, 0.30)]
VAL_RISES: Shape = [(0.9, 0.6), (0.5, 0.40), (0.45, 0.50)]
VAL_NEVER_FALLS: Shape = [(0.6, 0.45), (0.5, 0.47), (0.42, 0.46)]
UNDERFIT: Shape = [(0.9, 0.9), (0.8, 0.82), (0.8, 0.82)]
UNDERFIT_STILL_FALLING: Shape = [(0.9, 0.9), (0.7, 0.72)]
STILL_FALLING: Shape = [(0.3, 0.3), (0.2, 0.22), (0.15, 0.18)]
BEST_LAST_SLOWLY: Shape = [(0.3, 0.3), (0.2, 0.2), (0.19, 0.199)]
PLATEAU: Shape = [(0.3, 0.3), (0.2, 0.15), (0.15, 0.1503)]


@pytest.mark.parametrize("task", TASKS)
def test_diverged_status_wins_over_everything_even_without_epochs(task: str) -> None:
    assert diagnose_curves([], "diverged").code == "diverged"
    result = diagnose_curves(build(task, OVERFIT_GAP), "diverged", reference_loss=REFERENCES[task])
    assert result.code == "diverged"
    assert "10x" in result.next_action
    assert "004_e9930d7a8081840b.txt" in result.rule_source


@pytest.mark.parametrize("task", TASKS)
def test_exploding_or_non_finite_loss_is_diverged_even_if_status_says_completed(task: str) -> None:
    code, message, _ = diagnose(task, [(0.4, 0.4), (0.8, 1.0), (1.4, 1.6)])
    assert code == "diverged"
    assert "(more than 3x its first epoch)" in message
    nan_val = build(task, [(0.5, 0.5), (0.4, 0.4)])
    nan_val[1] = nan_val[1].model_copy(update={"val_loss": math.nan})
    assert diagnose_curves(nan_val, "completed").code == "diverged"


@pytest.mark.parametrize("rows", [[], [(0.5, 0.5)]])
def test_fewer_than_two_epochs_are_insufficient(rows: Shape) -> None:
    result = diagnose_curves(build("classification", rows), "stopped")
    assert result.code == "insufficient"
    assert f"only {len(rows)} epoch" in result.message


@pytest.mark.parametrize("task", TASKS)
def test_validation_loss_well_above_training_loss_is_overfitting_with_the_numbers(task: str) -> None:
    code, message, source = diagnose(task, OVERFIT_GAP)
    assert code == "overfitting"
    ref = REFERENCES[task]
    assert f"validation loss {0.30 * ref:.4g} vs training loss {0.05 * ref:.4g}" in message
    assert f"25% of the reference loss {ref:.4g}" in message
    assert "train accuracy high, validation low, read on the losses" in source
    assert "000_721f12b7d3a5a9e6.txt" in source
    # 25% is under a 30% threshold; the validation loss was still falling: more epochs, not regularisation.
    assert diagnose(task, OVERFIT_GAP, overfit_gap=0.3)[0] == "not_converged"


@pytest.mark.parametrize("task", TASKS)
def test_a_score_gap_alone_is_not_overfitting(task: str) -> None:
    # Train accuracy (R²) 1.0 against 0.75 on validation: the old score-gap rule called this overfitting.
    # The losses sit within 3% of the reference of each other and the validation loss is flat: no symptom.
    shape: Shape = [(0.6, 0.55), (0.25, 0.255), (0.2, 0.258)]
    history = build(task, shape, scores=[(0.8, 0.7), (0.97, 0.75), (1.0, 0.75)])
    result = diagnose_curves(history, "completed", reference_loss=REFERENCES[task])
    assert result.code == "ok", result.message
    assert f"validation loss {0.258 * REFERENCES[task]:.4g}" in result.message
    # Equal scores but a wide loss gap (over-confident on validation rows) is overfitting.
    gapped = build(task, [(0.6, 0.55), (0.25, 0.35), (0.1, 0.36)], scores=[(0.9, 0.9)] * 3)
    assert diagnose_curves(gapped, "completed", reference_loss=REFERENCES[task]).code == "overfitting"


@pytest.mark.parametrize("task", TASKS)
def test_validation_loss_rising_while_training_loss_falls_is_overfitting(task: str) -> None:
    code, message, source = diagnose(task, VAL_RISES)
    assert code == "overfitting"
    assert "rose 25% from its minimum" in message
    assert "validation error falls then rises" in source
    assert "002_d0d560747b3c77db.txt" in source
    assert diagnose(task, VAL_RISES, val_rise=0.3)[0] == "ok"


@pytest.mark.parametrize("task", TASKS)
def test_validation_loss_rising_while_training_loss_rises_too_is_not_overfitting(task: str) -> None:
    assert diagnose(task, [(0.5, 0.40), (0.4, 0.30), (0.45, 0.38)])[0] != "overfitting"


@pytest.mark.parametrize("task", TASKS)
def test_validation_loss_that_never_falls_while_training_loss_does_points_at_the_data(task: str) -> None:
    result = diagnose_curves(build(task, VAL_NEVER_FALLS), "completed", reference_loss=REFERENCES[task])
    assert result.code == "overfitting"
    assert "never fell below its first epoch's" in result.message
    assert "fell 30%" in result.message
    assert "train loss falls, validation loss never does" in result.rule_source
    assert "data pipeline" in result.next_action
    # Two epochs are too few to say "never".
    assert diagnose(task, VAL_NEVER_FALLS[:2])[0] != "overfitting"


@pytest.mark.parametrize("task", TASKS)
def test_training_loss_still_high_against_the_reference_is_underfitting(task: str) -> None:
    result = diagnose_curves(build(task, UNDERFIT), "completed", reference_loss=REFERENCES[task])
    assert result.code == "underfitting"
    ref = REFERENCES[task]
    assert f"final training loss and validation loss {0.8 * ref:.4g} and {0.82 * ref:.4g} are 80% and 82%" in (
        result.message
    )
    assert "capacity" in result.next_action
    assert "training and validation loss both high" in result.rule_source
    assert "more epochs" not in result.message  # the loss had flattened
    assert diagnose(task, UNDERFIT, underfit_loss_share=0.85)[0] == "ok"


@pytest.mark.parametrize("task", TASKS)
def test_a_high_training_loss_with_a_low_validation_loss_is_not_underfitting(task: str) -> None:
    # Dropout inflates the training loss (measured in training mode); the validation loss shows the fit.
    assert diagnose(task, [(0.9, 0.8), (0.6, 0.45), (0.6, 0.452)])[0] == "ok"
    assert diagnose(task, [(0.9, 0.8), (0.6, 0.55), (0.6, 0.552)])[0] == "underfitting"


@pytest.mark.parametrize("task", TASKS)
def test_high_losses_still_falling_fast_are_a_short_run_not_missing_capacity(task: str) -> None:
    # A few-epoch coarse trial: losses high because training stopped, not because the model cannot fit.
    result = diagnose_curves(build(task, UNDERFIT_STILL_FALLING), "completed", reference_loss=REFERENCES[task])
    assert result.code == "not_converged"
    assert "the training loss still fell 22% in the last epoch" in result.message
    assert "capacity cannot be judged yet" in result.message
    assert result.next_action.startswith("more epochs before more capacity")
    # A flattened training loss (1% drop) with a validation loss still falling: underfitting, epochs may help too.
    code, message, _ = diagnose(task, [(0.9, 0.9), (0.8, 0.85), (0.79, 0.82)])
    assert code == "underfitting"
    assert "more epochs may help too" in message
    # The plateau threshold is a setting.
    assert diagnose(task, UNDERFIT_STILL_FALLING, underfit_plateau=0.3)[0] == "underfitting"


@pytest.mark.parametrize("task", TASKS)
def test_overfitting_outranks_underfitting(task: str) -> None:
    low_and_gapped: Shape = [(0.9, 0.9), (0.7, 0.85), (0.7, 0.85)]
    assert diagnose(task, low_and_gapped)[0] == "overfitting"
    assert diagnose(task, low_and_gapped, overfit_gap=0.2)[0] == "underfitting"


def test_the_reference_loss_sets_the_scale() -> None:
    # A cross-entropy of 0.8 is a third of ln 10 (learning well) but 80% of a 1.0 reference.
    history = build("regression", UNDERFIT)  # train loss 0.8 at the end
    assert diagnose_curves(history, "completed", reference_loss=LN10).code == "ok"
    assert diagnose_curves(history, "completed", reference_loss=1.0).code == "underfitting"
    # Without a reference the first epoch's larger loss (0.9) stands in: 0.8 is 89% of it.
    fallback = diagnose_curves(history, "completed")
    assert fallback.code == "underfitting"
    assert "are 89% and 91% of the reference loss 0.9" in fallback.message


@pytest.mark.parametrize("task", TASKS)
def test_validation_loss_still_falling_is_not_converged(task: str) -> None:
    code, message, _ = diagnose(task, STILL_FALLING, status="early_stopped")
    assert code == "not_converged"
    assert "18.2%" in message


@pytest.mark.parametrize("task", TASKS)
def test_a_last_drop_that_does_not_reach_the_best_epoch_is_a_plateau(task: str) -> None:
    # Early stopped: the minimum was at epoch 1; the last epoch fell 5% but stayed above it.
    wobble: Shape = [(0.3, 0.3), (0.05, 0.100), (0.04, 0.112), (0.04, 0.106)]
    assert diagnose(task, wobble, status="early_stopped")[0] == "ok"


@pytest.mark.parametrize("task", TASKS)
def test_best_validation_loss_at_the_last_epoch_of_a_completed_run_is_not_converged(task: str) -> None:
    assert diagnose(task, BEST_LAST_SLOWLY)[0] == "not_converged"
    # A run stopped by the caller did not use all its epochs: a 0.5% drop is no reason to ask for more.
    assert diagnose(task, BEST_LAST_SLOWLY, status="stopped")[0] == "ok"


@pytest.mark.parametrize("task", TASKS)
def test_training_loss_is_used_when_there_is_no_validation(task: str) -> None:
    assert diagnose(task, [(0.3, None), (0.2, None)])[0] == "not_converged"


@pytest.mark.parametrize("task", TASKS)
def test_a_plateaued_good_run_is_ok(task: str) -> None:
    code, message, _ = diagnose(task, PLATEAU)
    assert code == "ok"
    assert f"training loss {0.15 * REFERENCES[task]:.4g}" in message


def test_a_trial_is_diagnosed_against_the_loss_its_model_starts_from() -> None:
    x = np.zeros((6, 2), dtype=np.float32)
    labels = np.array([0, 0, 0, 0, 1, 2])  # imbalanced: the reference is still ln C
    classes = TrialData(x, labels, x, labels, [2], ClassificationTask(["a", "b", "c"]))
    assert reference_loss(classes, HyperParams()) == pytest.approx(math.log(3))
    z = np.array([-1.5, -0.5, 0.0, 0.0, 0.5, 1.5])  # standardised: mean 0, population std 1
    z = z / z.std()
    numbers = TrialData(x, z, x, z, [2], RegressionTask(["y"], [0.0], [1.0]))
    assert reference_loss(numbers, HyperParams()) == pytest.approx(1.0)  # MSE of a zero output
    assert reference_loss(numbers, HyperParams(loss="l1")) == pytest.approx(np.abs(z).mean())
    assert reference_loss(numbers, HyperParams(loss="cross_entropy")) is None  # the trial failed in training


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
