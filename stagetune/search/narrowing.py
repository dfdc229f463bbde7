"""Narrowing the search space around the best coarse trials: a pure function, no I/O, no randomness.

Ranges are computed in the parameter's own scale (log10 for log parameters). Around the top trials'
values [lo, hi] (spread s) the new range is [lo - margin*s, hi + margin*s], kept inside the old
range and at least `min_width` of its width. Boundary rule (Google's tuning playbook: "a search
space is suspicious if the best point is near its boundary"): if the BEST trial's value lies within
`boundary_fraction` of the old width from an old bound, that bound moves outward by `widen_factor`
of the old width instead of shrinking. The best trial, not any top trial, decides: with five
random top trials, one of them near some bound is common and would widen nearly every range.
Hard limits clip everything last (never inside the old range: a user's space beyond them stays);
integers are rounded outward. The model's own hyperparameters (`space.params`) narrow by the same
rules, under the names `params.<name>`; their hard limits are `hard_limits.params.<name>`, and without
one a widened range keeps its sign (an integer range from >= 1 stays >= 1, one from >= 0 stays >= 0).
"""

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

from schemas.config import ModelConfig
from schemas.search import ChangeAction, HardLimits, Limit, NarrowingReport, NarrowingSettings, ParamChange, TrialRecord
from schemas.search_space import CategoricalParam, FloatParam, IntParam, SearchSpace
from stagetune.search.space import (
    SPACE_FIELDS,
    AnyParam,
    is_fixed,
    same_choice,
    slot_value,
    unused_fields,
    user_param_name,
)

_EPS = 1e-9
# No bound a user's parameter could reach: its range widens freely on that side.
_UNBOUNDED = 1e300


def _fmt(value: Any) -> str:
    """Three significant digits; whole numbers (integer ranges, 0, 1) exactly."""
    if isinstance(value, float) and not (value.is_integer() and abs(value) < 1e6):
        return f"{value:.3g}"
    return str(int(value)) if isinstance(value, float) else str(value)


def _tidy(value: float) -> float:
    """Drop float noise from a computed bound (3.0000000000000014e-4 -> 3e-4): 12 significant digits."""
    return float(f"{value:.12g}")


def _trials(n: int) -> str:
    return f"{n} trial" if n == 1 else f"{n} trials"


def _objective(trial: TrialRecord) -> float:
    assert trial.value is not None  # _ranked keeps only trials with a value
    return trial.value


def _ranked(trials: Sequence[TrialRecord], direction: str) -> list[TrialRecord]:
    """COMPLETE trials with a finite value, best first (ties by trial number)."""
    sign = {"minimize": 1.0, "maximize": -1.0}.get(direction)
    if sign is None:
        raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
    done = [t for t in trials if t.state == "COMPLETE" and t.value is not None and math.isfinite(t.value)]
    return sorted(done, key=lambda t: (sign * _objective(t), t.number))


def top_count(n_completed: int, settings: NarrowingSettings) -> int:
    if settings.top_quantile is None:
        return min(settings.top_k, n_completed)
    # _EPS: 0.28 * 25 is 7.000000000000001 in floats, which must not round up to 8.
    return min(n_completed, max(2, math.ceil(settings.top_quantile * n_completed - _EPS)))


def _change(name: str, old: AnyParam, new: AnyParam, action: ChangeAction, reason: str) -> ParamChange:
    scale = None if isinstance(old, CategoricalParam) else old.scale
    return ParamChange(name=name, kind=old.kind, scale=scale, old=old, new=new, action=action, reason=reason)


def _narrow_choices(name: str, param: CategoricalParam, values: list[Any]) -> tuple[CategoricalParam, ParamChange]:
    kept = [c for c in param.choices if any(same_choice(c, v) for v in values)]
    seen = ", ".join(map(str, kept))
    if not kept:
        reason = f"no top value is among the choices {param.choices}: kept"
        return param, _change(name, param, param, "kept", reason)
    if len(kept) == len(param.choices):
        return param, _change(
            name, param, param, "kept", f"top {_trials(len(values))} used every choice ({seen}): kept"
        )
    new = CategoricalParam(choices=kept)
    reason = f"top {_trials(len(values))} used only {seen}: choices reduced from {param.choices} to {kept}"
    return new, _change(name, param, new, "choices_reduced", reason)


def _window(xs: list[float], old_lo: float, old_hi: float, s: NarrowingSettings) -> tuple[float, float, bool]:
    """The narrowed [a, b] (transformed scale) inside the old range; True if the minimum width applied."""
    lo, hi = min(xs), max(xs)
    spread = hi - lo
    a, b = max(old_lo, lo - s.margin * spread), min(old_hi, hi + s.margin * spread)
    min_width = s.min_width * (old_hi - old_lo)
    if b - a >= min_width:
        return a, b, False
    centre = min(max((lo + hi) / 2, old_lo + min_width / 2), old_hi - min_width / 2)
    # max/min: by construction inside the old range; this only removes float rounding at the bounds.
    return max(old_lo, centre - min_width / 2), min(old_hi, centre + min_width / 2), True


def _user_limit(param: AnyParam, limit: Limit | None) -> Limit | None:
    """The hard limit of a model's own parameter: the one given, else one that keeps the range's sign."""
    if limit is not None or isinstance(param, CategoricalParam):
        return limit
    if param.low >= 1 and isinstance(param, IntParam):
        return Limit(low=1, high=_UNBOUNDED)
    return Limit(low=0.0 if param.low >= 0 else -_UNBOUNDED, high=_UNBOUNDED)


def _clip(name: str, low: float, high: float, limit: Limit, hits: list[str]) -> tuple[float, float]:
    clipped = []
    for side, value in (("low", low), ("high", high)):
        bounded = min(max(value, limit.low), limit.high)
        if bounded != value:
            hits.append(f"{name}.{side}: {_fmt(value)} clipped to the hard limit {_fmt(bounded)}")
        clipped.append(bounded)
    return clipped[0], clipped[1]


def _range_action(old: FloatParam | IntParam, low: float, high: float) -> ChangeAction:
    out_low, out_high = low < old.low, high > old.high
    if out_low and out_high:
        return "widened_both"
    if out_low or out_high:
        return "widened_low" if out_low else "widened_high"
    return "kept" if (low, high) == (old.low, old.high) else "narrowed"


def range_action(old: FloatParam | IntParam, new: FloatParam | IntParam) -> ChangeAction:
    """What a new range did to the old one: narrowed, widened on a side, or kept."""
    return _range_action(old, new.low, new.high)


def _narrow_range(
    name: str, param: FloatParam | IntParam, values: list[float], limit: Limit, s: NarrowingSettings, hits: list[str]
) -> tuple[FloatParam | IntParam, ParamChange]:
    """Narrow one numeric range around `values` (best first); see the module docstring for the rules."""
    log = param.scale == "log"
    values = [v for v in values if v > 0] if log else values
    if not values:
        return param, _change(name, param, param, "kept", "no top value is positive on this log scale: kept")
    fwd: Callable[[float], float] = math.log10 if log else float
    old_lo, old_hi = fwd(param.low), fwd(param.high)
    width = old_hi - old_lo
    xs = [fwd(v) for v in values]
    a, b, min_width_applied = _window(xs, old_lo, old_hi, s)
    spread = max(xs) - min(xs)
    notes = [f"minimum width {s.min_width:.0%} of the old range applied"] if min_width_applied else []
    at_low = xs[0] - old_lo <= s.boundary_fraction * width
    at_high = old_hi - xs[0] <= s.boundary_fraction * width
    side = "lower" if at_low else "upper"
    if at_low:
        a = min(old_lo - s.widen_factor * width, min(xs) - s.margin * spread)
    if at_high:
        b = max(old_hi + s.widen_factor * width, max(xs) + s.margin * spread)
    # Exact numbers where a bound is an old bound or a top value: 10**log10(x) may differ from x by an ulp.
    exact = {old_lo: param.low, old_hi: param.high, min(xs): min(values), max(xs): max(values)}
    low, high = (exact.get(x, _tidy(10**x if log else x)) for x in (a, b))
    # Beyond an old bound only through the boundary rule (tidying or 10**log10 may step over it).
    low, high = (low if at_low else max(low, param.low)), (high if at_high else min(high, param.high))
    # Every top value the old range held stays inside (guards rounding and far-outside top values).
    inside = [v for v in values if param.low <= v <= param.high]
    if inside:
        low, high = min(low, *inside), max(high, *inside)
    if at_low or at_high:
        bound = param.low if at_low else param.high
        notes.append(
            f"best value {_fmt(values[0])} sits at the {side} boundary {_fmt(bound)}: widened to "
            f"{_fmt(low if at_low else high)} instead of shrinking (tuning playbook: a best point near "
            "the boundary means the space is too small)"
        )
    n_hits = len(hits)
    # A hard limit never cuts into the old range (a space given beyond it, e.g. depth from 0, keeps its values).
    limit = Limit(low=min(limit.low, param.low), high=max(limit.high, param.high))
    low, high = _clip(name, low, high, limit, hits)
    notes.extend(hits[n_hits:])
    if isinstance(param, IntParam):
        low = max(math.floor(low + _EPS), math.ceil(limit.low - _EPS), 1 if log else -math.inf)
        high = max(low, min(math.ceil(high - _EPS), math.floor(limit.high + _EPS)))
        new: FloatParam | IntParam = IntParam(low=int(low), high=int(high), scale=param.scale)
    else:
        new = FloatParam(low=low, high=high, scale=param.scale)
    reason = (
        f"top {_trials(len(values))} span {_fmt(min(values))}..{_fmt(max(values))} ({param.scale}); "
        f"best {_fmt(values[0])}; old range {_fmt(param.low)}..{_fmt(param.high)}; "
        f"new range {_fmt(new.low)}..{_fmt(new.high)} (margin {s.margin:.0%})"
    )
    return new, _change(name, param, new, _range_action(param, new.low, new.high), "; ".join([reason, *notes]))


def _narrow_param(
    name: str, param: AnyParam, values: list[Any], limit: Limit | None, s: NarrowingSettings, hits: list[str]
) -> tuple[AnyParam, ParamChange]:
    if is_fixed(param):
        value = param.choices[0] if isinstance(param, CategoricalParam) else param.low
        return param, _change(name, param, param, "fixed", f"fixed at {_fmt(value)}: not sampled, nothing to narrow")
    if isinstance(param, CategoricalParam):
        return _narrow_choices(name, param, values)
    if limit is None:
        raise ValueError(f"no hard limit for the numeric parameter {name!r}")
    return _narrow_range(name, param, [float(v) for v in values], limit, s, hits)


def _kept(name: str, param: AnyParam, why: str) -> ParamChange:
    return _change(name, param, param, "kept", f"{why}: unchanged")


def narrow(
    space: SearchSpace,
    trials: Sequence[TrialRecord],
    direction: Literal["minimize", "maximize"],
    settings: NarrowingSettings,
    model: ModelConfig | None = None,
) -> tuple[SearchSpace, NarrowingReport]:
    """Narrow `space` around the best COMPLETE trials (pruned/failed ones have no usable value).

    With fewer than `settings.min_completed` completed trials the space comes back unchanged and the
    report says so (fallback=True). Learning rates narrow per optimizer, from the top trials that
    used it; optimizers no top trial used leave `optimizer.choices`. Parameters `model`'s family
    (default: an MLP) or the chosen optimizers never sample stay unchanged; the model's own
    (`space.params`) narrow like the built-in ones. Same inputs, in any order: the same output.
    """
    model = model if model is not None else ModelConfig()
    unused = unused_fields(model)
    ranked = _ranked(trials, direction)
    n_completed = len(ranked)
    if n_completed < settings.min_completed:
        reason = (
            f"only {n_completed} completed trial(s) of {len(trials)}, {settings.min_completed} required: "
            "search space left unchanged"
        )
        return space, NarrowingReport(
            fallback=True, reason=reason, direction=direction, top_trials=[], n_completed=n_completed
        )
    top = ranked[: top_count(n_completed, settings)]
    limits: HardLimits = settings.hard_limits
    hits: list[str] = []
    changes: list[ParamChange] = []
    updates: dict[str, Any] = {}

    def apply(field: str, name: str, param: AnyParam, users: list[TrialRecord], limit: Limit | None = None) -> AnyParam:
        values = [slot_value(t.hyperparams, field) for t in users]
        limit = limit if limit is not None else getattr(limits, field, None)
        new, change = _narrow_param(name, param, [v for v in values if v is not None], limit, settings, hits)
        changes.append(change)
        return new

    optimizer = apply("optimizer", "optimizer", space.optimizer, top)
    updates["optimizer"] = optimizer
    rates: dict[str, FloatParam] = {}
    for opt, rate in space.learning_rate.items():
        users = [t for t in top if t.hyperparams.optimizer == opt]
        name = f"learning_rate.{opt}"
        if users:
            new_rate = apply("learning_rate", name, rate, users)
            assert isinstance(new_rate, FloatParam)  # a FloatParam narrows to a FloatParam
            rates[opt] = new_rate
        else:
            why = (
                "no top trial used" if opt in space.optimizer.choices else "not an optimizer choice, so not sampled by"
            )
            changes.append(_kept(name, rate, f"{why} {opt}"))
            rates[opt] = rate
    updates["learning_rate"] = rates
    for field in SPACE_FIELDS:
        param = getattr(space, field)
        users = [t for t in top if t.hyperparams.optimizer == "sgd"] if field == "momentum" else top
        if field in unused:
            changes.append(_kept(field, param, f"not sampled for model family {model.family!r}"))
        elif not users and not is_fixed(param):
            changes.append(_kept(field, param, "only sampled with sgd, and no top trial used sgd"))
        else:
            updates[field] = apply(field, field, param, users)
    own: dict[str, AnyParam] = {}
    for name, param in sorted(space.params.items()):
        key = user_param_name(name)
        own[name] = apply(key, key, param, top, _user_limit(param, limits.params.get(name)))
    updates["params"] = own
    new_space = SearchSpace.model_validate({**dict(space), **updates})
    best = top[0]
    reason = (
        f"narrowed around the top {len(top)} of {n_completed} completed trials ({direction}; best: trial "
        f"{best.number}, value {_fmt(_objective(best))}); {len(trials) - n_completed} other trial(s) ignored"
    )
    report = NarrowingReport(
        fallback=False,
        reason=reason,
        direction=direction,
        top_trials=[t.number for t in top],
        n_completed=n_completed,
        changes=changes,
        hard_limits_hit=hits,
    )
    return new_space, report
