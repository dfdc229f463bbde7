"""Issue 17: a diagnosis read as a whole (noise of the split, early stopping, the best trials' agreement),
consistent from stage to stage, and the coarse verdict moving the narrowed ranges."""

import math
from typing import Any

import pytest

from schemas.config import PipelineConfig
from schemas.final import CurveDiagnosis, FinalResult, StageDiagnosisSummary
from schemas.hyperparams import HyperParams
from schemas.pipeline import PipelineResult, SearchStageResult
from schemas.results import EpochRecord
from schemas.search import DiagnosisShiftSettings, NarrowingReport, NarrowingSettings, TrialRecord
from schemas.search_space import FloatParam, IntParam, SearchSpace
from stagetune.config_loading import load_config
from stagetune.diagnosis import diagnose_curves, summarise_stage
from stagetune.report.advice import findings
from stagetune.report.markup import Numbers
from stagetune.report.sections_search import narrowing_section
from stagetune.search.diagnosis_shift import shift_by_diagnosis
from stagetune.search.narrowing import narrow

LN10 = math.log(10)


def history(pairs: list[tuple[float, float]]) -> list[EpochRecord]:
    return [
        EpochRecord(epoch=i, train_loss=t, val_loss=v, metrics={}, lr=1e-3, seconds=0.1)
        for i, (t, v) in enumerate(pairs)
    ]


# The report of issue 17: 0.99 validation accuracy, validation loss 0.026 at its best epoch, 0.031 when
# early stopping (patience 6) ended the run and restored that best epoch.
ISSUE_CURVE = [
    (1.2, 0.30), (0.2, 0.08), (0.05, 0.04), (0.02, 0.030), (0.01, 0.026),
    (0.008, 0.028), (0.006, 0.027), (0.005, 0.029), (0.004, 0.030), (0.003, 0.029), (0.002, 0.031),
]  # fmt: skip


def test_a_tiny_rise_that_early_stopping_handled_is_not_overfitting() -> None:
    result = diagnose_curves(history(ISSUE_CURVE), "early_stopped", reference_loss=LN10, n_val=269)
    assert result.code == "ok", result.message
    assert "0.026 -> 0.031 after epoch 4, not read as overfitting" in result.message
    assert "early stopping kept epoch 4" in result.message
    assert "too small to act on" in result.message
    # The same numbers from a run that did not keep its best epoch: still not worth regularising (0.2% of ln 10).
    assert diagnose_curves(history(ISSUE_CURVE), "completed", reference_loss=LN10, kept_best=False).code != (
        "overfitting"
    )


def test_a_real_steady_rise_is_overfitting_and_names_the_noise_band() -> None:
    # Three steps up of 0.03-0.04 each after the minimum: 0.10 in all, beyond 2 x sqrt 2 x 0.03; the gap stays small.
    rising = [(1.0, 0.9), (0.6, 0.5), (0.42, 0.35), (0.40, 0.39), (0.39, 0.42), (0.38, 0.45)]
    result = diagnose_curves(history(rising), "completed", reference_loss=1.0, n_val=500)
    assert result.code == "overfitting", result.message
    assert "rose 29% from its minimum 0.35 (epoch 2)" in result.message
    assert "beyond the noise band" in result.message
    # Early stopping that restored epoch 2 dealt with the rise; the gap at the kept epoch (0.05) is small.
    kept = diagnose_curves(history(rising), "early_stopped", reference_loss=1.0, n_val=500)
    assert kept.code != "overfitting"
    assert "early stopping kept epoch 2" in kept.message


def test_a_rise_within_the_epoch_to_epoch_jitter_is_noise() -> None:
    # After the minimum (0.20) the validation loss wobbles by ~0.05 per epoch and ends 0.05 higher (25%).
    jittery = [(0.8, 0.6), (0.4, 0.3), (0.3, 0.20), (0.28, 0.26), (0.26, 0.21), (0.24, 0.27), (0.22, 0.25)]
    result = diagnose_curves(history(jittery), "completed", reference_loss=1.0)
    assert result.code != "overfitting"
    assert "within the noise of the split" in result.message
    assert "epoch-to-epoch jitter" in result.message


@pytest.mark.parametrize(("n_val", "code"), [(30, "not_overfitting"), (100_000, "overfitting")])
def test_the_validation_size_sets_the_noise_band(n_val: int, code: str) -> None:
    # A 20% rise (0.1 of the reference) over two epochs: noise on 30 rows, a real rise on 100,000.
    curve = [(0.9, 0.9), (0.6, 0.5), (0.55, 0.55), (0.5, 0.6)]
    result = diagnose_curves(history(curve), "completed", reference_loss=1.0, n_val=n_val)
    assert (result.code == "overfitting") == (code == "overfitting"), result.message


def test_the_gap_is_read_at_the_epoch_early_stopping_kept() -> None:
    # Best epoch 2 (gap 0.05); the last epochs drift to a gap of 0.4 which early stopping threw away.
    curve = [(0.9, 0.9), (0.5, 0.5), (0.35, 0.40), (0.2, 0.45), (0.1, 0.47), (0.05, 0.45)]
    assert diagnose_curves(history(curve), "completed", reference_loss=1.0, kept_best=False).code == "overfitting"
    kept = diagnose_curves(history(curve), "early_stopped", reference_loss=1.0)
    assert kept.code != "overfitting", kept.message


def trial(number: int, value: float, code: str, **hp: Any) -> TrialRecord:
    return TrialRecord(number=number, state="COMPLETE", value=value, hyperparams=HyperParams(**hp), diagnosis=code)


def test_the_stage_verdict_comes_from_the_best_trials_agreeing() -> None:
    # The best four: three underfit, one is fine; the eight worst overfit (the most common code overall).
    trials = [trial(i, 0.1 + i / 100, "underfitting") for i in range(3)] + [trial(3, 0.14, "ok")]
    trials += [trial(10 + i, 0.5 + i / 100, "overfitting") for i in range(8)]
    summary = summarise_stage(trials, "minimize", NarrowingSettings(top_k=4))
    assert summary.verdict == "underfitting"
    assert summary.agreement == "3 of 4"
    assert summary.top_trials == [0, 1, 2, 3]
    assert summary.top_counts == {"underfitting": 3, "ok": 1}
    assert summary.dominant == "overfitting"  # over all runs, kept as context
    assert summary.message.startswith("3 of 4 best trials underfitting: more capacity")
    assert "over all runs: 8 of 12 run(s) overfitting" in summary.message
    # Two of four is no clear verdict; maximising ranks the other way round.
    split = [trial(0, 0.1, "underfitting"), trial(1, 0.2, "underfitting"), trial(2, 0.3, "ok"), trial(3, 0.4, "ok")]
    assert summarise_stage(split, "minimize", NarrowingSettings(top_k=4)).verdict is None
    assert "no clear verdict from the 4 best trials" in summarise_stage(split, "minimize", NarrowingSettings()).message
    top_two = summarise_stage(split, "maximize", NarrowingSettings(top_k=2))
    assert top_two.top_trials == [3, 2]
    assert top_two.verdict is None


COARSE = SearchSpace(
    optimizer={"kind": "categorical", "choices": ["adamw"]},
    learning_rate={"adamw": FloatParam(low=1e-4, high=1e-1, scale="log")},
    weight_decay=FloatParam(low=1e-6, high=1e-1, scale="log"),
    dropout=FloatParam(low=0.0, high=0.5),
    width=IntParam(low=32, high=512, scale="log"),
    depth=IntParam(low=0, high=3),
    batch_size={"kind": "categorical", "choices": [64]},
)
MIDDLE = {"weight_decay": 1e-4, "dropout": 0.2, "width": 128, "depth": 1, "learning_rate": 1e-2}


def coarse_trials(code: str, codes: tuple[str, ...] = ()) -> list[TrialRecord]:
    """Five top trials around the middle of every range (best first), all diagnosed `code` unless `codes`."""
    spread = [(1.0, 0.0), (1.5, 0.05), (0.7, -0.05), (1.2, 0.1), (0.8, -0.1)]
    out = []
    for i, (factor, shift) in enumerate(spread):
        hp = {
            "weight_decay": MIDDLE["weight_decay"] * factor,
            "dropout": MIDDLE["dropout"] + shift,
            "width": int(MIDDLE["width"] * factor),
            "depth": 1 + (i % 2),
            "learning_rate": MIDDLE["learning_rate"] * factor,
        }
        out.append(trial(i, 0.1 * (i + 1), codes[i] if codes else code, **hp))
    return out


def shifted(trials: list[TrialRecord], enabled: bool = True) -> tuple[SearchSpace, SearchSpace, NarrowingReport]:
    narrowed, report = narrow(COARSE, trials, "minimize", NarrowingSettings())
    space, shifted_report = shift_by_diagnosis(
        COARSE, narrowed, report, trials, DiagnosisShiftSettings(enabled=enabled)
    )
    return narrowed, space, shifted_report


def test_underfitting_top_trials_move_capacity_up_and_regularisation_down_within_the_coarse_range() -> None:
    trials = coarse_trials("underfitting")
    narrowed, space, report = shifted(trials)
    best = trials[0].hyperparams
    assert space.width.high > narrowed.width.high
    assert space.width.high <= COARSE.width.high
    assert space.depth.high >= narrowed.depth.high
    assert space.depth.high <= COARSE.depth.high
    assert space.dropout.low <= narrowed.dropout.low
    assert space.dropout.high < narrowed.dropout.high
    assert space.weight_decay.high < narrowed.weight_decay.high
    assert space.weight_decay.low < narrowed.weight_decay.low
    assert space.weight_decay.low >= COARSE.weight_decay.low
    # The best trial's point stays inside every moved range (the warm start replays it).
    for field in ("width", "depth", "dropout", "weight_decay"):
        param = getattr(space, field)
        assert param.low <= getattr(best, field) <= param.high, field
    assert space.learning_rate == narrowed.learning_rate  # no remedy names it
    assert report.diagnosis_shift is not None
    assert report.diagnosis_shift.startswith("5 of 5 top coarse trials underfitting: more capacity")
    moved = {c.name: c for c in report.changes if c.shift}
    assert set(moved) == {"width", "depth", "dropout", "weight_decay"}
    assert "moved up" in moved["width"].reason
    assert "moved down" in moved["dropout"].reason
    assert moved["dropout"].new == space.dropout
    # The narrowing table shows the reason, in the report's markdown too.
    section = narrowing_section(report, Numbers())
    assert "Moved by the coarse diagnosis: 5 of 5 top coarse trials underfitting" in section.markdown
    assert "refine.diagnosis_shift.fraction 0.5 of the narrowed width" in section.markdown


def test_overfitting_top_trials_move_regularisation_up_only() -> None:
    narrowed, space, report = shifted(coarse_trials("overfitting", ("overfitting",) * 4 + ("ok",)))
    assert space.dropout.high > narrowed.dropout.high
    assert space.dropout.high <= COARSE.dropout.high
    assert space.weight_decay.high > narrowed.weight_decay.high
    assert (space.width, space.depth) == (narrowed.width, narrowed.depth)
    assert report.diagnosis_shift is not None
    assert "4 of 5 top coarse trials overfitting" in report.diagnosis_shift


def test_a_range_at_the_coarse_bound_does_not_move_past_it() -> None:
    trials = [
        trial(i, 0.1 * (i + 1), "overfitting", dropout=d, weight_decay=1e-4) for i, d in enumerate([0.45, 0.5, 0.4])
    ]
    narrowed, space, _ = shifted(trials)
    assert space.dropout.high == max(narrowed.dropout.high, COARSE.dropout.high)
    assert space.dropout.low >= narrowed.dropout.low


def test_no_shift_without_agreement_or_when_switched_off() -> None:
    mixed = coarse_trials("", ("underfitting", "underfitting", "not_converged", "ok", "not_converged"))
    narrowed, space, report = shifted(mixed)
    assert space == narrowed
    assert report.diagnosis_shift is not None
    assert report.diagnosis_shift.startswith("no shift: the 5 top coarse")
    narrowed, space, report = shifted(coarse_trials("underfitting"), enabled=False)
    assert space == narrowed
    assert report.diagnosis_shift is None
    assert not any(c.shift for c in report.changes)
    narrowed, space, report = shifted(coarse_trials("not_converged"))
    assert space == narrowed
    assert report.diagnosis_shift is not None
    assert "a verdict no range answers" in report.diagnosis_shift


def stage(name: str, verdict: str, epochs: int) -> SearchStageResult:
    summary = StageDiagnosisSummary(
        counts={verdict: 4}, dominant=verdict, message=f"4 of 4 best trials {verdict}", top_trials=[0, 1, 2, 3],
        top_counts={verdict: 4}, verdict=verdict, agreement="4 of 4",
    )  # fmt: skip
    return SearchStageResult.model_construct(stage=name, epochs=epochs, n_train_rows=1000, diagnosis=summary)


def test_a_later_stage_that_contradicts_an_earlier_verdict_says_why_and_one_advice_stands() -> None:
    final = FinalResult.model_construct(
        epochs_run=40,
        diagnosis=CurveDiagnosis(
            code="overfitting", message="validation loss rose", next_action="regularise", rule_source="rules"
        ),
    )
    result = PipelineResult.model_construct(
        sanity=None, coarse=stage("coarse", "underfitting", 3), refine=None, narrowing=None, final=final
    )
    config = PipelineConfig().model_dump(mode="json")
    found = {f.stage: f for f in findings(result, config)}
    assert "Unlike the coarse stage's underfitting (3 epochs on 1000 rows)" in found["final"].evidence
    assert "40 epochs on the full training split" in found["final"].evidence
    assert any(o.startswith("space.dropout.high=") for o in found["final"].overrides)
    assert "Superseded: the final stage" in found["coarse"].evidence
    assert found["coarse"].overrides == []


def test_underfitting_advice_names_less_regularisation_from_the_configured_ranges() -> None:
    result = PipelineResult.model_construct(
        sanity=None, coarse=stage("coarse", "underfitting", 3), refine=None, narrowing=None, final=None
    )
    config = PipelineConfig().model_dump(mode="json")
    (coarse,) = [f for f in findings(result, config) if f.stage == "coarse"]
    space = config["space"]
    assert f"space.dropout.high={space['dropout']['high'] / 2:g}" in coarse.overrides
    assert f"space.weight_decay.high={space['weight_decay']['high'] / 10:.3g}" in coarse.overrides
    assert any(o.startswith("space.width.high=") for o in coarse.overrides)


def test_a_coarse_stage_not_converged_is_expected_and_asks_for_no_change() -> None:
    result = PipelineResult.model_construct(
        sanity=None,
        coarse=stage("coarse", "not_converged", 3),
        refine=stage("refine", "not_converged", 8),
        narrowing=None,
        final=None,
    )
    config = PipelineConfig().model_dump(mode="json")
    found = {f.stage: f for f in findings(result, config)}
    assert found["coarse"].overrides == []
    assert found["coarse"].next_action.startswith("expected of a coarse stage (3 epochs per trial")
    assert found["refine"].overrides == ["refine.epochs=16"]  # the refinement is meant to converge


def test_the_shift_is_off_by_default_and_switched_on_in_its_own_config_section() -> None:
    trials = coarse_trials("underfitting")
    narrowed, report = narrow(COARSE, trials, "minimize", NarrowingSettings())
    default = PipelineConfig().refine.diagnosis_shift
    assert shift_by_diagnosis(COARSE, narrowed, report, trials, default) == (narrowed, report)
    switched = load_config(None, ["refine.diagnosis_shift.enabled=true", "refine.diagnosis_shift.fraction=0.25"])
    space, _ = shift_by_diagnosis(COARSE, narrowed, report, trials, switched.refine.diagnosis_shift)
    assert space != narrowed
