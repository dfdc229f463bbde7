"""Read a run's learning curves the way a practitioner would: diverged, overfitting, underfitting, not converged.

Rules from TUNING-RULES.md ("Reading the curves"). Checks run in order of precedence and the first
that fires is the diagnosis:

    diverged > overfitting > underfitting > not_converged > ok

A diverged run's other numbers mean nothing; an overfitting model is not short of capacity, even if
its training accuracy is modest; an underfitting model needs capacity before it needs epochs.
Fewer than two recorded epochs (without divergence) give `insufficient`: no curve to read.
"""

import math
from collections import Counter
from collections.abc import Callable, Sequence

from schemas.final import CurveCode, CurveDiagnosis, CurveDiagnosisSettings, StageDiagnosisSummary
from schemas.results import EpochRecord

SOURCE_DIVERGED = "TUNING-RULES.md, loss explodes or becomes NaN: lower the learning rate (004_e9930d7a8081840b.txt)"
SOURCE_OVERFITTING = (
    "TUNING-RULES.md, train accuracy high, validation low: regularise; validation error falls then rises: "
    "early stopping (000_721f12b7d3a5a9e6.txt, 004_e9930d7a8081840b.txt)"
)
SOURCE_UNDERFITTING = (
    "TUNING-RULES.md, train and validation accuracy both low: more capacity (000_721f12b7d3a5a9e6.txt)"
)
SOURCE_NOT_CONVERGED = (
    "TUNING-RULES.md, coarse to fine: more epochs for the promising settings "
    "(000_721f12b7d3a5a9e6.txt, 004_e9930d7a8081840b.txt)"
)
SOURCE_NONE = "TUNING-RULES.md, reading the curves"

NEXT_ACTIONS: dict[str, str] = {
    "diverged": "lower the learning rate ~10x (and keep gradient clipping on)",
    "overfitting": "regularise: more dropout/weight decay, more data, early stopping",
    "underfitting": "more capacity: wider/deeper model, less dropout, less weight decay",
    "not_converged": "more epochs: the loss had not stopped falling",
    "ok": "nothing to change on the evidence of the curves",
    "insufficient": "train for at least 2 epochs to read the curves",
}
# Problems in order of precedence; "ok" and "insufficient" are not problems.
PROBLEMS: tuple[CurveCode, ...] = ("diverged", "overfitting", "underfitting", "not_converged")
ALL_CODES: tuple[CurveCode, ...] = (*PROBLEMS, "ok", "insufficient")
DEFAULT_SETTINGS = CurveDiagnosisSettings()
# A check returns the message of its diagnosis, or None when its symptom is absent.
Check = Callable[[Sequence[EpochRecord], str, CurveDiagnosisSettings], str | None]


def diagnose_curves(
    history: Sequence[EpochRecord], status: str, settings: CurveDiagnosisSettings = DEFAULT_SETTINGS
) -> CurveDiagnosis:
    """Diagnose one run from its per-epoch history and how it ended (`fit`'s status).

    `status` is "completed", "early_stopped", "diverged" or "stopped"; validation-based checks are
    skipped for epochs without validation numbers.
    """
    diverged = _diverged(history, status, settings)
    if diverged is not None:
        return _make("diverged", diverged, SOURCE_DIVERGED)
    if len(history) < 2:
        return _make("insufficient", f"only {len(history)} epoch(s) recorded (status {status})", SOURCE_NONE)
    checks: tuple[tuple[Check, CurveCode, str], ...] = (
        (_overfitting, "overfitting", SOURCE_OVERFITTING),
        (_underfitting, "underfitting", SOURCE_UNDERFITTING),
        (_not_converged, "not_converged", SOURCE_NOT_CONVERGED),
    )
    for check, code, source in checks:
        message = check(history, status, settings)
        if message is not None:
            return _make(code, message, source)
    last = history[-1]
    return _make("ok", f"no problem in the curves after {len(history)} epochs ({_accuracies(last)})", SOURCE_NONE)


def summarise_diagnoses(codes: Sequence[str]) -> StageDiagnosisSummary:
    """Count a stage's diagnosis codes and name the most common problem (ties go by precedence)."""
    unknown = sorted(set(codes) - set(ALL_CODES))
    if unknown:
        raise ValueError(f"unknown diagnosis code(s) {unknown}: expected some of {list(ALL_CODES)}")
    tally = Counter(codes)
    counts = {code: tally[code] for code in ALL_CODES if tally[code]}
    total = len(codes)
    problems = [code for code in PROBLEMS if tally[code]]
    if not problems:
        message = f"no problem diagnosed in {total} run(s)" if total else "no runs to diagnose"
        if tally["insufficient"]:
            message += f" ({tally['insufficient']} too short to read)"
        return StageDiagnosisSummary(counts=counts, dominant=None, message=message)
    dominant = max(problems, key=lambda code: (tally[code], -PROBLEMS.index(code)))
    others = [f"{tally[code]} {code}" for code in problems if code != dominant]
    message = (
        f"{tally[dominant]} of {total} run(s) {dominant.replace('_', ' ')}, the most common problem: "
        f"{NEXT_ACTIONS[dominant]}"
    )
    if others:
        message += f" (also {', '.join(others)})"
    return StageDiagnosisSummary(counts=counts, dominant=dominant, message=message)


def _make(code: CurveCode, message: str, source: str) -> CurveDiagnosis:
    return CurveDiagnosis(code=code, message=message, next_action=NEXT_ACTIONS[code], rule_source=source)


def _accuracies(record: EpochRecord) -> str:
    name, train, val = record.score_pair()
    text = f"train loss {record.train_loss:.4g}" if train is None else f"train {name} {train:.3f}"
    if val is not None:
        text += f", validation {name} {val:.3f}"
    return text


def _diverged(history: Sequence[EpochRecord], status: str, settings: CurveDiagnosisSettings) -> str | None:
    if status == "diverged":
        return f"training diverged (loss became NaN/inf) after {len(history)} recorded epoch(s)"
    for record in history:
        losses = [record.train_loss] if record.val_loss is None else [record.train_loss, record.val_loss]
        if not all(math.isfinite(loss) for loss in losses):
            return f"a non-finite loss at epoch {record.epoch}"
    if len(history) >= 2:
        first, last = history[0].train_loss, history[-1].train_loss
        if last > settings.explode_ratio * first:
            return (
                f"training loss grew from {first:.4g} to {last:.4g} "
                f"(more than {settings.explode_ratio:g}x its first epoch): it is exploding"
            )
    return None


def _overfitting(history: Sequence[EpochRecord], status: str, settings: CurveDiagnosisSettings) -> str | None:
    name, train, val = history[-1].score_pair()
    if train is not None and val is not None and train - val > settings.overfit_gap:
        return (
            f"train {name} {train:.3f} vs validation {val:.3f}: a gap of {train - val:.3f} > {settings.overfit_gap:g}"
        )
    validated = [r for r in history if r.val_loss is not None]
    if len(validated) < 2:
        return None
    best = min(validated, key=lambda r: r.val_loss if r.val_loss is not None else math.inf)
    end = validated[-1]
    assert best.val_loss is not None
    assert end.val_loss is not None
    rise = end.val_loss / best.val_loss - 1 if best.val_loss > 0 else 0.0
    if rise > settings.val_rise and end.train_loss < best.train_loss:
        return (
            f"validation loss rose {rise:.0%} from its minimum {best.val_loss:.4g} (epoch {best.epoch}) to "
            f"{end.val_loss:.4g} (epoch {end.epoch}) while training loss kept falling "
            f"({best.train_loss:.4g} -> {end.train_loss:.4g})"
        )
    return None


def _underfitting(history: Sequence[EpochRecord], status: str, settings: CurveDiagnosisSettings) -> str | None:
    last = history[-1]
    name, train, _ = last.score_pair()
    threshold = settings.underfit_train_r2 if name == "R²" else settings.underfit_train_acc
    if train is None or train >= threshold:
        return None
    # The overfitting check ran first, so any train/validation gap here is below overfit_gap.
    message = f"final {_accuracies(last)}: training {name} below {threshold:g}"
    if _still_improving(history, settings) is not None:
        message += "; the validation loss was still falling, so more epochs may help too"
    return message


def _not_converged(history: Sequence[EpochRecord], status: str, settings: CurveDiagnosisSettings) -> str | None:
    improving = _still_improving(history, settings)
    if improving is not None:
        return improving
    validated = [r for r in history if r.val_loss is not None]
    if status == "completed" and validated:
        best = min(validated, key=lambda r: r.val_loss if r.val_loss is not None else math.inf)
        if best is validated[-1]:
            return f"the best validation loss ({best.val_loss:.4g}) is at the last epoch ({best.epoch})"
    return None


def _still_improving(history: Sequence[EpochRecord], settings: CurveDiagnosisSettings) -> str | None:
    """A message when the last epoch's loss (validation, else training) fell by more than `still_improving`."""
    previous, last = history[-2], history[-1]
    if previous.val_loss is not None and last.val_loss is not None:
        name, before, after = "validation", previous.val_loss, last.val_loss
    else:
        name, before, after = "training", previous.train_loss, last.train_loss
    if before <= 0:
        return None
    drop = (before - after) / before
    if drop > settings.still_improving:
        return (
            f"{name} loss still fell {drop:.1%} in the last epoch ({before:.4g} -> {after:.4g}, "
            f"more than {settings.still_improving:.0%})"
        )
    return None
