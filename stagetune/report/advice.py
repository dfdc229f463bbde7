"""Section 7: per stage, what the curves say, the concrete next change, and the rule it comes from.

The diagnoses themselves come from the stage results (stagetune.diagnosis made them); this module
only turns a diagnosis code into a concrete `--set` override for the next run, checked against the
config schema so a suggestion is never an invalid setting. Curves are read on train vs validation
loss for every task (`CURVE_READING` says how, at the head of the section).
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from schemas.config import PipelineConfig
from schemas.pipeline import PipelineResult, SearchStageResult
from schemas.stages import Stage
from stagetune.config_loading import parse_override, with_value
from stagetune.diagnosis import (
    DEFAULT_SETTINGS,
    NEXT_ACTIONS,
    PROBLEMS,
    SOURCE_COLLAPSED,
    SOURCE_DIVERGED,
    SOURCE_NONE,
    SOURCE_NOT_CONVERGED,
    SOURCE_OVERFITTING,
    SOURCE_UNDERFITTING,
    contradiction,
)
from stagetune.errors import InputError

RULE_SOURCES = {
    "diverged": SOURCE_DIVERGED,
    "collapsed": SOURCE_COLLAPSED,
    "overfitting": SOURCE_OVERFITTING,
    "underfitting": SOURCE_UNDERFITTING,
    "not_converged": SOURCE_NOT_CONVERGED,
}
SOURCE_SHIFT = "stagetune: the coarse verdict moves the narrowed ranges (refine.diagnosis_shift, bench/README.md)"
COARSE_SHORT_ACTION = (
    "expected of a coarse stage ({epochs} epochs per trial, short on purpose): the refinement and the final "
    "training run longer; raise coarse.epochs only if the refinement's ranking disagrees with the coarse one"
)
MIXED_ACTION = "no change the best trials agree on: read the trial table for the settings they share"
SOURCE_BOUNDARY = (
    "google-research/tuning_playbook: a search space is suspicious if the best point is near its boundary "
    "(refine.narrowing.boundary_fraction)"
)
CURVE_READING = (
    "Curves are read on training vs validation loss, for classification and regression alike, against the "
    "loss a freshly initialised model starts from (ln C for C classes; for regression the zero-output loss on "
    "standardised targets, 1 for MSE): overfitting when the validation loss ends more than "
    f"{DEFAULT_SETTINGS.overfit_gap:.0%} of that reference above the training loss, rises more than "
    f"{DEFAULT_SETTINGS.val_rise:.0%} from its minimum while the training loss falls, or never falls while the "
    "training loss does; underfitting when the training and validation losses both end above "
    f"{DEFAULT_SETTINGS.underfit_loss_share:.0%} of it and the training loss has flattened (a drop above "
    f"{DEFAULT_SETTINGS.underfit_plateau:.0%} in the last epoch is a run cut short: more epochs first). A rise or "
    f"a gap must also clear {DEFAULT_SETTINGS.val_rise_floor:.0%} of the reference and the noise of the validation "
    f"split ({DEFAULT_SETTINGS.noise_z:g} standard errors, from its size and the epoch-to-epoch jitter); a rise "
    "after the best epoch of a run that kept that epoch (early stopping) is already dealt with. A search stage's "
    "finding is the verdict of its best trials (the ones the narrowing keeps) when a clear majority of them agree; "
    "a later, longer stage that reads the curves differently says why, and its advice replaces the earlier one."
)
_EPOCH_KEYS: dict[str, str] = {
    Stage.COARSE: "coarse.epochs",
    Stage.REFINE: "refine.epochs",
    Stage.FINAL: "final.max_epochs",
}


@dataclass(frozen=True)
class Finding:
    """One stage's diagnosis and what to do about it."""

    stage: str
    code: str
    evidence: str
    next_action: str
    overrides: list[str]
    rule_source: str


def findings(result: PipelineResult, config: Mapping[str, Any] | None) -> list[Finding]:
    """Every stage's finding, in pipeline order (stages that did not run are left out)."""
    found: list[Finding] = []
    sanity = result.sanity
    if sanity is not None:
        for d in sanity.diagnoses:
            found.append(Finding(Stage.SANITY, d.code, d.message, d.next_action, [], d.rule_source))
        if not sanity.diagnoses:
            found.append(Finding(Stage.SANITY, "ok", "the gate passed", "nothing to change", [], SOURCE_NONE))
    verdicts: list[tuple[int, Finding, str]] = []  # (index in found, finding, what the stage ran on)
    for stage in (result.coarse, result.refine):
        if stage is not None:
            finding = _search_finding(stage, config)
            finding = _reconcile(found, verdicts, finding, f"{stage.epochs} epochs on {stage.n_train_rows} rows")
            found.append(finding)
            verdicts.append((len(found) - 1, finding, f"{stage.epochs} epochs on {stage.n_train_rows} rows"))
    if result.narrowing is not None:
        found.extend(_narrowing_findings(result))
    if result.final is not None:
        curve = result.final.diagnosis
        overrides = concrete_overrides(Stage.FINAL, curve.code, config)
        finding = Finding(Stage.FINAL, curve.code, curve.message, curve.next_action, overrides, curve.rule_source)
        found.append(
            _reconcile(found, verdicts, finding, f"{result.final.epochs_run} epochs on the full training split")
        )
    return found


def _narrowing_findings(result: PipelineResult) -> list[Finding]:
    narrowing = result.narrowing
    assert narrowing is not None
    out = []
    widened = [c.name for c in narrowing.changes if c.action.startswith("widened") and not c.shift]
    if widened:
        evidence = f"the best coarse points sat at a boundary of {', '.join(widened)}: the refinement widened it"
        action = "widen the coarse range of these parameters on that side for the next run"
        out.append(Finding("narrowing", "at_boundary", evidence, action, [], SOURCE_BOUNDARY))
    shifted = [c.name for c in narrowing.changes if c.shift]
    if shifted and narrowing.diagnosis_shift:
        action = "the refinement searched the advised side already; see its finding for whether it helped"
        out.append(Finding("narrowing", "shifted", narrowing.diagnosis_shift, action, [], SOURCE_SHIFT))
    return out


def _reconcile(found: list[Finding], verdicts: list[tuple[int, Finding, str]], later: Finding, ran: str) -> Finding:
    """`later`, saying why when it contradicts an earlier stage's verdict; that earlier finding (in `found`)
    then points to it and loses its overrides: one set of advice, the later, longer run's."""
    for index, earlier, earlier_ran in verdicts:
        if not contradiction(earlier.code, later.code):
            continue
        found[index] = replace(
            earlier,
            evidence=f"{earlier.evidence}. Superseded: the {later.stage} stage ({ran}) reads {later.code}",
            overrides=[],
        )
        later = replace(
            later,
            evidence=f"{later.evidence}. Unlike the {earlier.stage} stage's {earlier.code} ({earlier_ran}): this "
            f"stage ran {ran}, so its curves show what the shorter runs could not; act on this reading",
        )
    return later


def _search_finding(stage: SearchStageResult, config: Mapping[str, Any] | None) -> Finding:
    summary = stage.diagnosis
    if summary.top_trials:  # the verdict of the best trials (results before issue 17 have none)
        problems = [c for c in summary.top_counts if c in PROBLEMS]
        code: str = summary.verdict or ("mixed" if problems else "ok")
    else:
        code = summary.dominant or ("ok" if summary.counts else "insufficient")
    next_action = NEXT_ACTIONS.get(code, MIXED_ACTION if code == "mixed" else NEXT_ACTIONS["ok"])
    source = RULE_SOURCES.get(code, SOURCE_NONE)
    overrides = concrete_overrides(stage.stage, code, config)
    if stage.stage == Stage.COARSE and code == "not_converged":
        # Short on purpose: the coarse stage ranks settings, the later stages train them longer.
        next_action = COARSE_SHORT_ACTION.format(epochs=stage.epochs)
        overrides = []
    return Finding(stage.stage, code, summary.message, next_action, overrides, source)


def concrete_overrides(stage: str, code: str, config: Mapping[str, Any] | None) -> list[str]:
    """`--set` overrides that apply the remedy for `code` at `stage`; [] when none applies or it would not validate."""
    if config is None:
        return []
    builder = _BUILDERS.get(code)
    try:
        overrides = builder(stage, config) if builder is not None else []
    except (KeyError, TypeError, ValueError):  # a config from another stagetune version: no concrete advice
        return []
    return overrides if overrides and _valid(config, overrides) else []


def _more_epochs(stage: str, config: Mapping[str, Any]) -> list[str]:
    key = _EPOCH_KEYS.get(stage)
    if key is None:
        return []
    section, name = key.split(".")
    return [f"{key}={max(2, 2 * int(config[section][name]))}"]


def _more_capacity(stage: str, config: Mapping[str, Any]) -> list[str]:
    space, limits = config["space"], config["refine"]["narrowing"]["hard_limits"]
    overrides = []
    if space["width"].get("kind") == "int" and space["width"]["high"] < limits["width"]["high"]:
        overrides.append(f"space.width.high={min(2 * space['width']['high'], int(limits['width']['high']))}")
    if space["depth"].get("kind") == "int" and space["depth"]["high"] < limits["depth"]["high"]:
        overrides.append(f"space.depth.high={space['depth']['high'] + 1}")
    # ... and less regularisation: the upper ends come down (halved; weight decay by a decade), from the config.
    dropout, decay = space["dropout"], space["weight_decay"]
    if dropout.get("kind") == "float" and dropout["high"] > dropout["low"] and dropout["high"] > 0.1:
        overrides.append(f"space.dropout.high={max(dropout['low'], round(dropout['high'] / 2, 3)):g}")
    if decay.get("kind") == "float" and decay["high"] / 10 > decay["low"]:
        overrides.append(f"space.weight_decay.high={decay['high'] / 10:.3g}")
    return overrides


def _more_regularisation(stage: str, config: Mapping[str, Any]) -> list[str]:
    space = config["space"]
    overrides = []
    if space["dropout"].get("kind") == "float":
        overrides.append(f"space.dropout.high={min(0.9, round(space['dropout']['high'] + 0.2, 3)):g}")
    if space["weight_decay"].get("kind") == "float" and space["weight_decay"]["high"] < 0.1:
        overrides.append(f"space.weight_decay.high={min(0.1, space['weight_decay']['high'] * 10):.3g}")
    return overrides


def _lower_learning_rates(stage: str, config: Mapping[str, Any]) -> list[str]:
    rates = config["space"]["learning_rate"]
    return [
        f"space.learning_rate.{name}.high={param['high'] / 10:.3g}"
        for name, param in rates.items()
        if param["high"] / 10 > param["low"]
    ]


def _rebalance(stage: str, config: Mapping[str, Any]) -> list[str]:
    choices = config["space"]["rebalance"]["choices"]
    wanted = [c for c in ("class_weights", "oversample") if c not in choices]
    return [f"space.rebalance.choices=[{', '.join(wanted)}]"] if wanted else []


_BUILDERS: dict[str, Callable[[str, Mapping[str, Any]], list[str]]] = {
    "not_converged": _more_epochs,
    "insufficient": _more_epochs,
    "underfitting": _more_capacity,
    "overfitting": _more_regularisation,
    "diverged": _lower_learning_rates,
    "collapsed": _rebalance,
}


def _valid(config: Mapping[str, Any], overrides: list[str]) -> bool:
    raw = dict(config)
    try:
        for override in overrides:
            key, value = parse_override(override)
            raw = with_value(raw, key.split("."), value)
        PipelineConfig.model_validate(raw)
    except (InputError, ValidationError, KeyError, TypeError):
        return False
    return True
