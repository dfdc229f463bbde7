"""A stage's verdict from its best trials, and the note that keeps verdicts consistent from stage to stage.

Why the best trials and not every run: a random coarse stage samples poor corners of the space (a tiny
learning rate, heavy dropout) whose runs underfit whatever the best settings do; the most common code
among all runs then describes the corners, not the region the refinement narrows to. The verdict is a
problem shared by a clear majority (more than half, at least two) of the trials the narrowing keeps
(`refine.narrowing.top_k` / `top_quantile`); without one the stage has no verdict and says how the best
trials split. The count over all runs stays in the summary, as context.
"""

import math
from collections import Counter
from collections.abc import Sequence

from schemas.final import CurveCode, StageDiagnosisSummary
from schemas.search import NarrowingSettings, TrialRecord
from stagetune.diagnosis.curves import ALL_CODES, NEXT_ACTIONS, PROBLEMS
from stagetune.search.narrowing import top_count

# Verdicts that contradict each other: a later stage's one of these after an earlier stage's other.
OPPOSITES: dict[str, str] = {"underfitting": "overfitting", "overfitting": "underfitting"}


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


def best_trials(trials: Sequence[TrialRecord], direction: str, settings: NarrowingSettings) -> list[TrialRecord]:
    """The COMPLETE trials with a finite value the narrowing builds on, best first (ties by number)."""
    sign = -1.0 if direction == "maximize" else 1.0
    done = [t for t in trials if t.state == "COMPLETE" and t.value is not None and math.isfinite(t.value)]
    ranked = sorted(done, key=lambda t: (sign * (t.value or 0.0), t.number))
    return ranked[: top_count(len(ranked), settings)] if ranked else []


def verdict_of(codes: Sequence[str]) -> tuple[CurveCode | None, int]:
    """The problem a clear majority (more than half, at least two) of `codes` share, and how many share it."""
    tally = Counter(code for code in codes if code in PROBLEMS)
    for code in PROBLEMS:  # precedence breaks a tie, which a strict majority cannot have anyway
        n = tally[code]
        if n >= 2 and n > len(codes) / 2:
            return code, n
    return None, 0


def summarise_stage(
    trials: Sequence[TrialRecord], direction: str, settings: NarrowingSettings
) -> StageDiagnosisSummary:
    """The stage's summary: all runs counted, and the verdict of its best trials with their agreement."""
    overall = summarise_diagnoses([t.diagnosis for t in trials if t.diagnosis])
    top = [t for t in best_trials(trials, direction, settings) if t.diagnosis]
    codes = [t.diagnosis for t in top if t.diagnosis]
    top_counts = {code: n for code in ALL_CODES if (n := codes.count(code))}
    verdict, agreeing = verdict_of(codes)
    if not codes:
        return overall
    split = ", ".join(f"{n} {code.replace('_', ' ')}" for code, n in top_counts.items())
    if verdict is not None:
        agreement = f"{agreeing} of {len(codes)}"
        message = f"{agreement} best trials {verdict.replace('_', ' ')}: {NEXT_ACTIONS[verdict]}"
        if agreeing < len(codes):
            message += f" (the best trials: {split})"
    else:
        agreement = ""
        message = f"no clear verdict from the {len(codes)} best trials ({split})"
    message += f"; over all runs: {overall.message}"
    return overall.model_copy(
        update={
            "message": message,
            "top_trials": [t.number for t in top],
            "top_counts": top_counts,
            "verdict": verdict,
            "agreement": agreement,
        }
    )


def contradiction(earlier: str | None, later: str) -> bool:
    """True when a later stage's code says the opposite of an earlier stage's verdict."""
    return earlier is not None and OPPOSITES.get(earlier) == later
