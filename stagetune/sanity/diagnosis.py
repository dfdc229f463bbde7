"""Turn failed sanity checks into diagnoses: what most likely went wrong, and what to do next."""

import math

import numpy as np

from schemas.results import Diagnosis
from stagetune.sanity.overfit import OverfitOutcome

SANITY_SOURCES = "TUNING-RULES.md, sanity-check first (000_721f12b7d3a5a9e6.txt, 004_e9930d7a8081840b.txt)"
NAN_SOURCE = "TUNING-RULES.md, loss explodes or becomes NaN: lower the learning rate (004_e9930d7a8081840b.txt)"
OUTPUT_SOURCES = (
    "TUNING-RULES.md, softmax output for multi-class (002_d0d560747b3c77db.txt, 004_e9930d7a8081840b.txt); "
    "sanity-check first (000_721f12b7d3a5a9e6.txt)"
)
# The overfit loss counts as flat when its end stays above this share of the smaller of its start
# and the label-prior loss (what a model ignoring its inputs reaches).
FLAT_LOSS_RATIO = 0.9
TAIL_STEPS = 5


def diagnose_initial_loss(initial_loss: float, expected: float, tolerance: float) -> Diagnosis | None:
    """A diagnosis when the loss at initialisation is not finite or too far from ln(num_classes)."""
    if not math.isfinite(initial_loss):
        return Diagnosis(
            check="initial_loss",
            code="nan_loss",
            message=f"loss at initialisation is {initial_loss}: the untrained model already outputs NaN/inf",
            next_action="check the inputs for NaN/inf and the forward pass for log(0), division by zero or overflow",
            rule_source=SANITY_SOURCES,
        )
    deviation = abs(initial_loss - expected) / expected
    if deviation <= tolerance:
        return None
    return Diagnosis(
        check="initial_loss",
        code="initial_loss_off",
        message=(
            f"loss at initialisation is {initial_loss:.4g}, expected about {expected:.4g} (ln C, or the loss of a "
            "zero output on standardised regression targets) "
            f"(relative deviation {deviation:.2f} > {tolerance})"
        ),
        next_action=(
            "output layer or loss mismatch: look for scaled logits or a large output-layer init, softmax applied "
            "before the cross-entropy (it expects raw logits), the wrong number of classes or outputs, or a "
            "regression output squashed or offset by an activation after the head"
        ),
        rule_source=OUTPUT_SOURCES,
    )


def diagnose_overfit(
    outcome: OverfitOutcome, target_acc: float, learning_rate: float, score_name: str = "train accuracy"
) -> Diagnosis | None:
    """A diagnosis when the overfit run missed its target: NaN loss, a flat loss, or neither."""
    if outcome.reached:
        return None
    if outcome.nonfinite_step is not None:
        return _nan_overfit(outcome.nonfinite_step, learning_rate)
    first, last = outcome.losses[0], float(np.mean(outcome.losses[-TAIL_STEPS:]))
    target = f"{target_acc}"
    if outcome.ceiling < 1:  # identical inputs with different targets: the task's share of what is reachable
        reached = outcome.target if outcome.target is not None else target_acc * outcome.ceiling
        target = f"{reached:.3f} ({target_acc} applied to the {outcome.ceiling:.3f} reachable)"
    summary = (
        f"after {outcome.steps} steps on {outcome.samples} rows, {score_name} {outcome.train_acc:.3f} "
        f"< target {target}; loss {first:.4g} -> {last:.4g}"
    )
    floor = FLAT_LOSS_RATIO * min(first, outcome.prior_loss)
    if last > floor:
        return Diagnosis(
            check="overfit",
            code="flat_loss",
            message=(
                f"{summary}; the loss stayed above {floor:.4g} ({FLAT_LOSS_RATIO} x the lower of its start and "
                f"the {outcome.prior_loss:.4g} of ignoring the inputs: the class frequencies or the target mean): "
                "the outputs hardly depend on the inputs"
            ),
            next_action=(
                "data/label/model bug: check that the inputs reach the output, that labels match their rows, "
                "and the model definition (forward pass, frozen or detached layers)"
            ),
            rule_source=SANITY_SOURCES,
        )
    return Diagnosis(
        check="overfit",
        code="not_overfit",
        message=f"{summary}: the model learns but did not memorise the subset",
        next_action=(
            "increase sanity.overfit_max_steps or the model capacity, or check the data (duplicate rows with "
            "different labels cannot be memorised)"
        ),
        rule_source=SANITY_SOURCES,
    )


def _nan_overfit(updates: int, learning_rate: float) -> Diagnosis:
    if updates == 0:
        return Diagnosis(
            check="overfit",
            code="nan_loss",
            message="loss was NaN/inf on the first batch, before any update: the learning rate is not the cause",
            next_action="check the inputs for NaN/inf and the forward pass for log(0), division by zero or overflow",
            rule_source=SANITY_SOURCES,
        )
    return Diagnosis(
        check="overfit",
        code="nan_loss",
        message=f"loss became NaN/inf after {updates} updates at learning rate {learning_rate:.3g}",
        next_action="learning rate too high: lower it ~10x (sanity.overfit_learning_rate, or the search range)",
        rule_source=NAN_SOURCE,
    )
