"""Let the coarse stage's verdict move the narrowed ranges: more capacity for underfitting, more regularisation
for overfitting (`refine.diagnosis_shift`). A pure function of the narrowing's output and the coarse trials.

Narrowing centres the refinement on where the best coarse trials were. When a clear majority of those same
trials (the narrowing's `top_trials`, stagetune.diagnosis.stage.verdict_of) share a diagnosis with a known
remedy, the remedy's side of the space is more promising than the trials' spread alone says: each advised
range moves its advised bound outward by `fraction` of its narrowed width (in its own scale, log or
linear), and pulls its other bound inward by the same amount, never past the best trial's value, so the
best point stays reachable and the warm start still replays it. Nothing moves past the coarse range or the
narrowed one, whichever reaches further (the boundary rule's widening stands; the hard limits were applied
before). Verdicts without a range remedy (not converged: more epochs; diverged; collapsed) move nothing
and say so. Off by default (`refine.diagnosis_shift.enabled: false`): bench/diagnosis_shift.py found it did
not help. On the embedded defaults the coarse top trials (3 epochs) are "not converged" and nothing moves;
on glass with 8 coarse epochs they overfit, and moving dropout and weight decay up lost test balanced
accuracy in 5 of 6 paired seeds: a rise the trial score already reads at its best epoch is not a call for
more regularisation on 200 rows. Numbers in bench/README.md (issue 17, part B).
"""

import math
from collections.abc import Callable, Sequence

from schemas.config import ModelConfig
from schemas.search import DiagnosisShiftSettings, NarrowingReport, ParamChange, TrialRecord
from schemas.search_space import CategoricalParam, FloatParam, IntParam, SearchSpace
from stagetune.diagnosis import NEXT_ACTIONS, verdict_of
from stagetune.search.narrowing import range_action
from stagetune.search.space import is_fixed, slot_value, unused_fields

# Per verdict: the parameters it moves and the direction (+1: up, -1: down).
SHIFTS: dict[str, dict[str, int]] = {
    "underfitting": {"width": 1, "depth": 1, "dropout": -1, "weight_decay": -1},
    "overfitting": {"dropout": 1, "weight_decay": 1},
}
_WHY = {"underfitting": "more capacity", "overfitting": "more regularisation"}


def shift_by_diagnosis(
    coarse_space: SearchSpace,
    narrowed: SearchSpace,
    report: NarrowingReport,
    trials: Sequence[TrialRecord],
    settings: DiagnosisShiftSettings,
    model: ModelConfig | None = None,
) -> tuple[SearchSpace, NarrowingReport]:
    """`narrowed` with the advised ranges moved when the narrowing's top trials agree on a diagnosis;
    the report says what moved and why (or why nothing did). Switched off: both come back unchanged."""
    if not settings.enabled:
        return narrowed, report
    if report.fallback:
        return narrowed, report.model_copy(update={"diagnosis_shift": "no shift: the space was not narrowed"})
    by_number = {t.number: t for t in trials}
    top = [by_number[n] for n in report.top_trials if n in by_number]
    codes = [t.diagnosis for t in top if t.diagnosis]
    verdict, agreeing = verdict_of(codes)
    split = ", ".join(f"{codes.count(c)} {c.replace('_', ' ')}" for c in dict.fromkeys(codes)) or "none diagnosed"
    if verdict is None:
        note = f"no shift: the {len(top)} top coarse trials do not agree on a diagnosis ({split})"
        return narrowed, report.model_copy(update={"diagnosis_shift": note})
    agreement = f"{agreeing} of {len(codes)} top coarse trials {verdict.replace('_', ' ')}"
    moves = SHIFTS.get(verdict)
    if moves is None:
        note = f"no shift: {agreement}, a verdict no range answers ({NEXT_ACTIONS[verdict]})"
        return narrowed, report.model_copy(update={"diagnosis_shift": note})
    unused = unused_fields(model if model is not None else ModelConfig())
    best = top[0]
    updates: dict[str, FloatParam | IntParam] = {}
    changes = {c.name: c for c in report.changes}
    moved: list[str] = []
    for field, sign in moves.items():
        old, new = getattr(coarse_space, field), getattr(narrowed, field)
        if field in unused or isinstance(new, CategoricalParam) or is_fixed(new) or isinstance(old, CategoricalParam):
            continue
        value = slot_value(best.hyperparams, field)
        shifted = _shift_range(old, new, sign, settings.fraction, None if value is None else float(value))
        if (shifted.low, shifted.high) == (new.low, new.high):
            continue
        updates[field] = shifted
        text = (
            f"{agreement}: {_WHY[verdict]}, moved {'up' if sign > 0 else 'down'} "
            f"{new.low:.3g}..{new.high:.3g} -> {shifted.low:.3g}..{shifted.high:.3g} "
            f"(refine.diagnosis_shift.fraction {settings.fraction:g} of the narrowed width; best trial's "
            f"{value} kept inside)"
        )
        moved.append(field)
        change = changes.get(field)
        if change is not None:
            changes[field] = _with_shift(change, old, shifted, text)
    if not moved:
        note = f"no shift: {agreement}, but its ranges already sit at the coarse bounds on the advised side"
        return narrowed, report.model_copy(update={"diagnosis_shift": note})
    space = SearchSpace.model_validate({**dict(narrowed), **updates})
    note = f"{agreement}: {_WHY[verdict]}, so {', '.join(moved)} moved in that direction after narrowing"
    new_changes = [changes[c.name] for c in report.changes]
    return space, report.model_copy(update={"diagnosis_shift": note, "changes": new_changes})


def _with_shift(change: ParamChange, old: FloatParam | IntParam, new: FloatParam | IntParam, text: str) -> ParamChange:
    return change.model_copy(
        update={"new": new, "shift": text, "reason": f"{change.reason}; {text}", "action": range_action(old, new)}
    )


def _shift_range(
    old: FloatParam | IntParam, new: FloatParam | IntParam, sign: int, fraction: float, best: float | None
) -> FloatParam | IntParam:
    """`new` moved towards `sign`: the advised bound out by `fraction` of its width, the other in by as much,
    never past `best`; both inside the coarse range or the narrowed one, whichever reaches further."""
    log = new.scale == "log"
    fwd: Callable[[float], float] = math.log10 if log else float
    back: Callable[[float], float] = (lambda x: 10**x) if log else float
    a, b = fwd(new.low), fwd(new.high)
    floor, ceiling = min(fwd(old.low), a), max(fwd(old.high), b)
    step = fraction * (b - a)
    keep = None if best is None or (log and best <= 0) else fwd(best)
    if sign > 0:
        b2 = min(ceiling, b + step)
        a2 = max(a, min(a + step, keep if keep is not None else math.inf))
    else:
        a2 = max(floor, a - step)
        b2 = min(b, max(b - step, keep if keep is not None else -math.inf))
    exact = {fwd(new.low): new.low, fwd(new.high): new.high, fwd(old.low): old.low, fwd(old.high): old.high}
    low, high = (exact.get(x, float(f"{back(x):.12g}")) for x in (a2, b2))
    if isinstance(new, IntParam):
        # Outward rounding on both sides: the advised bound reaches the next integer, the pulled one keeps it.
        ilow, ihigh = math.floor(low + 1e-9), math.ceil(high - 1e-9)
        ilow = max(ilow, int(min(old.low, new.low)))
        ihigh = min(ihigh, int(max(old.high, new.high)))
        return IntParam(low=ilow, high=max(ilow, ihigh), scale=new.scale)
    return FloatParam(low=low, high=max(low, high), scale=new.scale)
