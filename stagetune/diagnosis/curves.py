"""Read a run's learning curves the way a practitioner would: diverged, overfitting, underfitting, not converged.

Rules from TUNING-RULES.md ("Reading the curves"), read on train vs validation LOSS for every task, as
the worked keypoint regression judges each net. Checks run in order of precedence and the first that
fires is the diagnosis:

    diverged > collapsed > overfitting > underfitting > not_converged > ok

A diverged run's other numbers mean nothing; an overfitting model is not short of capacity, even if
its training loss is still high; an underfitting model needs capacity before it needs epochs.
Fewer than two recorded epochs (without divergence) give `insufficient`: no curve to read.

Why losses and a reference loss. Accuracy (or R²) gaps are task-specific and accuracy hides what
cross-entropy shows (a model growing over-confident on validation rows). Losses exist for every
task, but their scale does not: ln 10 = 2.3 for ten classes, ~1 for MSE on standardised targets.
So the absolute thresholds are shares of a reference loss: the loss a freshly initialised model
starts from (`Task.expected_initial_loss`: ln C for classification, whatever the class balance or
class weights, since a uniform softmax scores ln C on any distribution; the zero-output loss for
regression, exactly 1 for MSE on targets standardised with the training split). On MSE regression a
loss share is then 1 - R², so the defaults (`overfit_gap` 0.1, `underfit_loss_share` 0.5) are the
train-minus-validation R² gap of 0.1 and the train R² floor of 0.5 the R² rules used; on
classification they read as McFadden's pseudo-R² against the uniform guess (a cross-entropy still
above half of ln C is a model that has learnt less than half of what separates the classes); as the
rule says "both", underfitting needs the validation loss above that share too. The
caller passes the reference (`reference_loss`); without one the first epoch's larger loss stands in
for it, an underestimate (the model learnt during that epoch), so the checks then fire earlier.

Two biases, both towards not crying overfitting: the training loss is the mean over the epoch with
dropout on, so it reads higher than the final weights' loss would; and with class weights or
oversampling it is measured on a rebalanced distribution, so the gap is only trusted above 10% of
the reference. The rising-validation check is relative to the validation minimum (`val_rise`).

Read as a whole, not threshold by threshold (issue 17: a final report called a validation loss rising
0.026 -> 0.031 at 0.99 accuracy "overfitting" after early stopping had already kept the best epoch):

- A rise or a gap must clear the noise of the split (stagetune.diagnosis.noise: `noise_z` standard
  errors from the validation size and the jitter past the best epoch) and `val_rise_floor` of the
  reference loss, a size worth acting on.
- A rise after the best epoch of a run that kept the best epoch (early stopping restored it) is what
  early stopping is for: noted, not diagnosed. The gap is then read at the kept epoch, not the last.
- Underfitting needs the training loss to have flattened (`underfit_plateau`); high losses that still
  fall are a run cut short (not_converged: more epochs before more capacity), the usual state of a
  few-epoch coarse trial.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from schemas.final import CurveCode, CurveDiagnosis, CurveDiagnosisSettings
from schemas.results import EpochRecord
from stagetune.diagnosis.noise import noise_band

SOURCE_DIVERGED = "TUNING-RULES.md, loss explodes or becomes NaN: lower the learning rate (004_e9930d7a8081840b.txt)"
SOURCE_OVERFITTING = (
    "TUNING-RULES.md, train accuracy high, validation low, read on the losses as the keypoint case does "
    "(training loss well below validation loss): regularise; validation error falls then rises: early stopping "
    "(000_721f12b7d3a5a9e6.txt, 004_e9930d7a8081840b.txt)"
)
SOURCE_OVERFITTING_GAP = (
    "TUNING-RULES.md, train accuracy high, validation low, read on the losses as the keypoint case does "
    "(training loss well below validation loss): regularise (000_721f12b7d3a5a9e6.txt, 004_e9930d7a8081840b.txt)"
)
SOURCE_VAL_RISES = (
    "TUNING-RULES.md, validation error falls then rises: early stopping (patience), regularise "
    "(002_d0d560747b3c77db.txt, 004_e9930d7a8081840b.txt)"
)
SOURCE_VAL_NEVER_FALLS = (
    "TUNING-RULES.md, train loss falls, validation loss never does: validation data differ from training, or "
    "preprocessing applied only in training: check the data pipeline (000_721f12b7d3a5a9e6.txt, reader comments)"
)
SOURCE_UNDERFITTING = (
    "TUNING-RULES.md, train and validation accuracy both low at the end, read on the losses "
    "(training and validation loss both high): more capacity (000_721f12b7d3a5a9e6.txt)"
)
SOURCE_NOT_CONVERGED = (
    "TUNING-RULES.md, coarse to fine: more epochs for the promising settings "
    "(000_721f12b7d3a5a9e6.txt, 004_e9930d7a8081840b.txt)"
)
SOURCE_COLLAPSED = (
    "TUNING-RULES.md, what the sources leave implicit: with skewed classes accuracy and unweighted loss reward "
    "predicting the majority class; class ratio is a parameter: reweight or oversample the minority "
    "(000_721f12b7d3a5a9e6.txt)"
)
SOURCE_NONE = "TUNING-RULES.md, reading the curves"

NEXT_ACTIONS: dict[str, str] = {
    "diverged": "lower the learning rate ~10x (and keep gradient clipping on)",
    "collapsed": "rebalance the classes (space.rebalance: class_weights, oversample) and judge by a balanced "
    "objective (search.objective auto or val_balanced_acc)",
    "overfitting": "regularise: more dropout/weight decay, more data, early stopping",
    "underfitting": "more capacity: wider/deeper model, less dropout, less weight decay",
    "not_converged": "more epochs: the loss had not stopped falling",
    "ok": "nothing to change on the evidence of the curves",
    "insufficient": "train for at least 2 epochs to read the curves",
}
SHORT_RUN_ACTION = "more epochs before more capacity: the losses are high but still falling"
NEVER_FALLS_ACTION = (
    "check the data pipeline (validation rows prepared like training rows?), then regularise: "
    "more dropout/weight decay, more data"
)
# Problems in order of precedence; "ok" and "insufficient" are not problems.
PROBLEMS: tuple[CurveCode, ...] = ("diverged", "collapsed", "overfitting", "underfitting", "not_converged")
ALL_CODES: tuple[CurveCode, ...] = (*PROBLEMS, "ok", "insufficient")
DEFAULT_SETTINGS = CurveDiagnosisSettings()


class Symptom(NamedTuple):
    """What a check found: its evidence, the rule it applies, and a next action when not the code's usual one."""

    message: str
    source: str
    next_action: str | None = None


@dataclass(frozen=True)
class Reading:
    """One run's curves and what every check reads them against."""

    history: Sequence[EpochRecord]
    status: str
    settings: CurveDiagnosisSettings
    scale: float  # the reference loss
    band: float  # the noise band of a validation-loss difference (0: unknown)
    band_how: str
    kept: EpochRecord | None  # the best epoch, when the run restored it (early stopping); else None

    @property
    def validated(self) -> list[EpochRecord]:
        return [r for r in self.history if r.val_loss is not None]


# A check returns the code it found with its symptom, or None when absent.
Check = Callable[[Reading], tuple[CurveCode, Symptom] | None]


def diagnose_curves(
    history: Sequence[EpochRecord],
    status: str,
    settings: CurveDiagnosisSettings = DEFAULT_SETTINGS,
    reference_loss: float | None = None,
    n_val: int | None = None,
    kept_best: bool | None = None,
) -> CurveDiagnosis:
    """Diagnose one run from its per-epoch history and how it ended (`fit`'s status).

    `status` is "completed", "early_stopped", "diverged" or "stopped"; validation-based checks are
    skipped for epochs without validation numbers. `reference_loss` is the loss the run started from
    (`Task.expected_initial_loss` of its training targets, for its loss); see the module docstring.
    `n_val` (validation rows) sizes the noise band; `kept_best` says the model kept its best validation
    epoch (None: when early stopping stopped it, as `fit` then restores that epoch).
    """
    diverged = _diverged(history, status, settings)
    if diverged is not None:
        return _make("diverged", Symptom(diverged, SOURCE_DIVERGED))
    if len(history) < 2:
        return _make("insufficient", Symptom(f"only {len(history)} epoch(s) recorded (status {status})", SOURCE_NONE))
    validated = [r for r in history if r.val_loss is not None]
    keeps = status == "early_stopped" if kept_best is None else kept_best
    kept = _best(validated) if keeps and validated else None
    band, how = noise_band(validated, n_val, settings.noise_z)
    reading = Reading(history, status, settings, _scale(history, reference_loss), band, how, kept)
    checks: tuple[Check, ...] = (_collapsed, _overfitting, _underfitting, _not_converged)
    note = _dismissed_rise(reading)
    for check in checks:
        found = check(reading)
        if found is not None:
            code, symptom = found
            return _make(code, symptom._replace(message=symptom.message + note))
    last = history[-1]
    message = f"no problem in the curves after {len(history)} epochs ({_losses(last)})"
    return _make("ok", Symptom(message + note, SOURCE_NONE))


def _make(code: CurveCode, symptom: Symptom) -> CurveDiagnosis:
    return CurveDiagnosis(
        code=code,
        message=symptom.message,
        next_action=symptom.next_action or NEXT_ACTIONS[code],
        rule_source=symptom.source,
    )


def _best(validated: Sequence[EpochRecord]) -> EpochRecord:
    return min(validated, key=lambda r: r.val_loss if r.val_loss is not None else math.inf)


def _scale(history: Sequence[EpochRecord], reference_loss: float | None) -> float:
    """The reference loss, or without one the first epoch's larger (training or validation) loss."""
    if reference_loss is not None and math.isfinite(reference_loss) and reference_loss > 0:
        return reference_loss
    first = history[0]
    return max(first.train_loss, first.val_loss if first.val_loss is not None else 0.0) or 1.0


def _losses(record: EpochRecord) -> str:
    text = f"training loss {record.train_loss:.4g}"
    if record.val_loss is not None:
        text += f", validation loss {record.val_loss:.4g}"
    name, train, val = record.score_pair()
    if train is not None and val is not None:
        text += f"; train {name} {train:.3f}, validation {val:.3f}"
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


def _collapsed(r: Reading) -> tuple[CurveCode, Symptom] | None:
    # Read at the epoch a run keeps (its best validation loss), else its last.
    validated = r.validated
    record = _best(validated) if validated else r.history[-1]
    predicted, true = record.metric("val/top_class_pred_share"), record.metric("val/top_class_true_share")
    if predicted is None or true is None:
        return None
    if predicted < r.settings.collapse_share or true >= r.settings.collapse_share:
        return None
    balanced = record.metric("val/balanced_acc")
    detail = "" if balanced is None else f", validation balanced accuracy {balanced:.3f}"
    return "collapsed", Symptom(
        f"collapsed to the majority class: at epoch {record.epoch} one class was predicted for {predicted:.0%} of "
        f"the validation rows, which hold {true:.0%} of that class{detail}",
        SOURCE_COLLAPSED,
    )


def _overfitting(r: Reading) -> tuple[CurveCode, Symptom] | None:
    gap = _gap(r)
    if gap is not None:
        return "overfitting", gap
    validated = r.validated
    if len(validated) < 2:
        return None
    best, first, end = _best(validated), validated[0], validated[-1]
    assert best.val_loss is not None
    assert end.val_loss is not None
    assert first.val_loss is not None
    if best is first and len(validated) >= 3 and first.train_loss > 0:
        drop = 1 - end.train_loss / first.train_loss
        if drop > r.settings.val_rise:
            return "overfitting", Symptom(
                f"validation loss never fell below its first epoch's {first.val_loss:.4g} (now {end.val_loss:.4g}) "
                f"while training loss fell {drop:.0%} ({first.train_loss:.4g} -> {end.train_loss:.4g}): "
                "overfitting from the start, or validation rows that differ from the training rows",
                SOURCE_VAL_NEVER_FALLS,
                NEVER_FALLS_ACTION,
            )
    rise = _rise(r)
    if rise is not None and not _rise_dismissals(r, rise):
        return "overfitting", Symptom(
            f"validation loss rose {rise.relative:.0%} from its minimum {best.val_loss:.4g} (epoch {best.epoch}) to "
            f"{end.val_loss:.4g} (epoch {end.epoch}) while training loss kept falling "
            f"({best.train_loss:.4g} -> {end.train_loss:.4g}){_band_text(r)}",
            SOURCE_VAL_RISES,
        )
    return None


def _gap(r: Reading) -> Symptom | None:
    """Validation loss well above training loss at the epoch the run keeps (its last, or its restored best)."""
    record = r.kept or r.history[-1]
    if record.val_loss is None:
        return None
    gap = record.val_loss - record.train_loss
    if gap <= r.settings.overfit_gap * r.scale or gap <= r.band:
        return None
    where = "at the last epoch" if r.kept is None else f"at epoch {record.epoch}, the best one, which the run kept"
    return Symptom(
        f"validation loss {record.val_loss:.4g} vs training loss {record.train_loss:.4g} {where}: a gap of "
        f"{gap:.4g}, {gap / r.scale:.0%} of the reference loss {r.scale:.4g} (more than "
        f"{r.settings.overfit_gap:.0%}){_band_text(r)}",
        SOURCE_OVERFITTING_GAP,
    )


class Rise(NamedTuple):
    """The validation loss's climb from its minimum to the last epoch, the training loss falling meanwhile."""

    best: EpochRecord
    end: EpochRecord
    absolute: float
    relative: float


def _rise(r: Reading) -> Rise | None:
    """The climb after the minimum when it is above `val_rise` of the minimum and training kept falling."""
    validated = r.validated
    if len(validated) < 2:
        return None
    best, end = _best(validated), validated[-1]
    assert best.val_loss is not None
    assert end.val_loss is not None
    absolute = end.val_loss - best.val_loss
    relative = absolute / best.val_loss if best.val_loss > 0 else 0.0
    if relative <= r.settings.val_rise or not end.train_loss < best.train_loss:
        return None
    return Rise(best, end, absolute, relative)


def _rise_dismissals(r: Reading, rise: Rise) -> list[str]:
    """Why a rise above `val_rise` is still not overfitting to act on ([] when it is)."""
    reasons = []
    floor = r.settings.val_rise_floor * r.scale
    if rise.absolute <= floor:
        reasons.append(
            f"{rise.absolute:.2g} is {rise.absolute / r.scale:.1%} of the reference loss {r.scale:.4g} "
            f"(at most {r.settings.val_rise_floor:.0%}: too small to act on)"
        )
    if r.band > 0 and rise.absolute <= r.band:
        reasons.append(f"within the noise of the split ({r.band:.2g}: {r.band_how})")
    if r.kept is not None:
        reasons.append(f"early stopping kept epoch {r.kept.epoch}, the minimum, so the rise is already dealt with")
    return reasons


def _dismissed_rise(r: Reading) -> str:
    """A note for a rise that looked like overfitting on the relative threshold alone but is not acted on."""
    rise = _rise(r)
    if rise is None:
        return ""
    reasons = _rise_dismissals(r, rise)
    if not reasons:
        return ""
    assert rise.best.val_loss is not None
    assert rise.end.val_loss is not None
    return (
        f"; the validation loss rose {rise.best.val_loss:.4g} -> {rise.end.val_loss:.4g} after epoch "
        f"{rise.best.epoch}, not read as overfitting: {'; '.join(reasons)}"
    )


def _band_text(r: Reading) -> str:
    return f", beyond the noise band {r.band:.2g} ({r.band_how})" if r.band > 0 else ""


def _underfitting(r: Reading) -> tuple[CurveCode, Symptom] | None:
    # "Train and validation both low": both losses must stay high. The training loss alone would
    # read dropout's noise (it is measured in training mode) as missing capacity.
    history, settings, scale = r.history, r.settings, r.scale
    last = history[-1]
    losses = {"training": last.train_loss} | ({} if last.val_loss is None else {"validation": last.val_loss})
    if min(losses.values()) / scale <= settings.underfit_loss_share:
        return None
    names, values = " and ".join(f"{name} loss" for name in losses), " and ".join(f"{v:.4g}" for v in losses.values())
    shares = " and ".join(f"{v / scale:.0%}" for v in losses.values())
    message = (
        f"final {names} {values} {'are' if len(losses) > 1 else 'is'} {shares} of the reference loss {scale:.4g} "
        f"(more than {settings.underfit_loss_share:.0%})"
    )
    before = history[-2].train_loss
    drop = (before - last.train_loss) / before if before > 0 else 0.0
    if drop > settings.underfit_plateau:
        # A run cut short, not a model short of capacity: the usual few-epoch coarse trial.
        message += (
            f", but the training loss still fell {drop:.0%} in the last epoch (more than "
            f"{settings.underfit_plateau:.0%}): the run was cut short, so capacity cannot be judged yet"
        )
        return "not_converged", Symptom(message, SOURCE_NOT_CONVERGED, SHORT_RUN_ACTION)
    if _still_improving(history, settings) is not None:
        message += "; the validation loss was still falling, so more epochs may help too"
    return "underfitting", Symptom(message, SOURCE_UNDERFITTING)


def _not_converged(r: Reading) -> tuple[CurveCode, Symptom] | None:
    improving = _still_improving(r.history, r.settings)
    if improving is not None:
        return "not_converged", Symptom(improving, SOURCE_NOT_CONVERGED)
    validated = r.validated
    if r.status == "completed" and validated:
        best = _best(validated)
        if best is validated[-1]:
            return "not_converged", Symptom(
                f"the best validation loss ({best.val_loss:.4g}) is at the last epoch ({best.epoch})",
                SOURCE_NOT_CONVERGED,
            )
    return None


def _still_improving(history: Sequence[EpochRecord], settings: CurveDiagnosisSettings) -> str | None:
    """A message when the last epoch's loss (validation, else training) fell by more than `still_improving`
    to a new minimum: a drop that only climbs back from a wobble above the best epoch (an early-stopped
    run's last epochs) is a plateau, not a loss still falling."""
    previous, last = history[-2], history[-1]
    if previous.val_loss is not None and last.val_loss is not None:
        name, before, after = "validation", previous.val_loss, last.val_loss
        if any(r.val_loss is not None and r.val_loss < after for r in history[:-1]):
            return None
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
