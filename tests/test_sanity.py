"""The sanity gate passes a correct model and fails each deliberately broken one with the right diagnosis."""

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, make_classification
from sklearn.preprocessing import StandardScaler

from schemas.config import SanityConfig
from schemas.hyperparams import HyperParams
from schemas.results import LrRangePoint, SanityResult
from stagetune.errors import InputError
from stagetune.sanity import run_sanity_gate
from stagetune.sanity.diagnosis import diagnose_overfit
from stagetune.sanity.lr_range import suggest_lr
from stagetune.sanity.overfit import OverfitOutcome

CPU = torch.device("cpu")
# The broken models fail (b) by running out of steps: fewer steps keep those tests fast.
QUICK = SanityConfig(overfit_max_steps=150, lr_range_steps=40)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (no download), standardised."""
    data = load_digits()
    return StandardScaler().fit_transform(data.data).astype(np.float32), data.target


def gate(
    data: tuple[np.ndarray, np.ndarray], cfg: SanityConfig = QUICK, family: str = "mlp", **kwargs: object
) -> SanityResult:
    x, y = data
    shape = [1, 8, 8] if family == "cnn" else [x.shape[1]]
    return run_sanity_gate(
        x,
        y,
        family=family,
        hp=HyperParams(),
        input_shape=shape,
        num_classes=int(y.max()) + 1,
        cfg=cfg,
        device=CPU,
        seed=0,
        grad_clip_norm=5.0,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_a_correct_model_passes_every_check(digits: tuple[np.ndarray, np.ndarray], family: str) -> None:
    cfg = SanityConfig()
    steps: dict[str, list[int]] = {"overfit": [], "lr_range": []}
    result = gate(digits, cfg, family, on_step=lambda phase, step, metrics: steps[phase].append(step))
    assert result.passed, result.diagnoses
    assert result.diagnoses == []
    assert result.initial_loss_ok
    assert abs(result.initial_loss - math.log(10)) / math.log(10) < 0.05
    assert result.overfit_ok
    assert result.overfit_train_acc >= cfg.overfit_target_acc
    assert 0 < result.overfit_steps < cfg.overfit_max_steps
    assert len(result.overfit_losses) == result.overfit_steps
    assert result.overfit_losses[-1] < 0.5 * result.overfit_losses[0]
    assert result.lr_suggestion is not None
    assert cfg.lr_range_min < result.lr_suggestion < cfg.lr_range_max
    assert len(result.lr_range) > cfg.lr_range_steps // 2
    assert steps["overfit"] == list(range(1, result.overfit_steps + 1))
    assert steps["lr_range"] == list(range(len(result.lr_range)))
    assert result.seconds > 0


@pytest.mark.slow
def test_the_gate_is_seeded_and_leaves_global_random_state_alone(digits: tuple[np.ndarray, np.ndarray]) -> None:
    before = torch.get_rng_state()
    first, second = gate(digits), gate(digits)
    assert torch.equal(torch.get_rng_state(), before)
    assert first.model_copy(update={"seconds": 0}) == second.model_copy(update={"seconds": 0})


@pytest.mark.slow
def test_output_that_ignores_the_input_fails_with_flat_loss(digits: tuple[np.ndarray, np.ndarray]) -> None:
    result = gate(digits, family="custom", import_path="tests.broken_models:input_ignoring")
    assert not result.passed
    assert result.initial_loss_ok  # constant outputs still start at ln(C): only the overfit test can tell
    assert not result.overfit_ok
    assert [(d.check, d.code) for d in result.diagnoses] == [("overfit", "flat_loss")]
    assert "000_721f12b7d3a5a9e6.txt" in result.diagnoses[0].rule_source
    assert "inputs reach the output" in result.diagnoses[0].next_action


@pytest.mark.slow
def test_flat_loss_is_judged_against_the_label_prior_on_imbalanced_data() -> None:
    # On a 95/5 set a model blind to its inputs still lowers its loss from ln 2 towards the 0.2 of
    # predicting the class frequencies: a clear fall, yet never better than those frequencies.
    x, y = make_classification(n_samples=1000, n_features=10, weights=[0.95, 0.05], random_state=0)
    data = (StandardScaler().fit_transform(x).astype(np.float32), y)
    broken = gate(data, family="custom", import_path="tests.broken_models:input_ignoring")
    assert np.mean(broken.overfit_losses[-5:]) < 0.9 * broken.overfit_losses[0]  # no flat loss by ratio alone
    assert [d.code for d in broken.diagnoses] == ["flat_loss"]
    assert gate(data).passed


def test_nan_output_fails_with_nan_loss_and_the_result_survives_json(digits: tuple[np.ndarray, np.ndarray]) -> None:
    result = gate(digits, family="custom", import_path="tests.broken_models:nan_output")
    assert not result.passed
    assert not result.initial_loss_ok
    assert math.isnan(result.initial_loss)
    assert {(d.check, d.code) for d in result.diagnoses} == {("initial_loss", "nan_loss"), ("overfit", "nan_loss")}
    assert "before any update" in result.diagnoses[1].message
    assert result.lr_suggestion is None
    reread = SanityResult.model_validate_json(result.model_dump_json())
    assert math.isnan(reread.initial_loss)


@pytest.mark.slow
def test_scaled_logits_fail_the_initial_loss_check(digits: tuple[np.ndarray, np.ndarray]) -> None:
    result = gate(digits, family="custom", import_path="tests.broken_models:scaled_logits")
    assert not result.passed
    assert not result.initial_loss_ok
    assert result.initial_loss > 3 * math.log(10)
    assert result.overfit_ok  # it can still learn: the fault is the output scale
    assert [(d.check, d.code) for d in result.diagnoses] == [("initial_loss", "initial_loss_off")]
    assert "logits" in result.diagnoses[0].next_action


def test_wrong_number_of_outputs_is_an_input_error(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    with pytest.raises(InputError, match=r"expected \(batch, 10\)") as caught:
        run_sanity_gate(
            x,
            y,
            family="custom",
            hp=HyperParams(),
            input_shape=[64],
            num_classes=10,
            cfg=QUICK,
            device=CPU,
            seed=0,
            import_path="tests.broken_models:wrong_class_count",
        )
    assert caught.value.field == "model.import_path"


@pytest.mark.slow
def test_lr_range_test_can_be_skipped(digits: tuple[np.ndarray, np.ndarray]) -> None:
    result = gate(digits, QUICK.model_copy(update={"lr_range_test": False}))
    assert result.passed
    assert (result.lr_suggestion, result.lr_range) == (None, [])


@pytest.mark.slow
def test_lr_range_test_stops_when_the_loss_blows_up(digits: tuple[np.ndarray, np.ndarray]) -> None:
    cfg = QUICK.model_copy(update={"lr_range_max": 10.0, "lr_range_steps": 60})
    x, y = digits
    result = run_sanity_gate(
        x,
        y,
        family="mlp",
        hp=HyperParams(optimizer="sgd"),
        input_shape=[64],
        num_classes=10,
        cfg=cfg,
        device=CPU,
        seed=0,
    )
    points = result.lr_range
    assert 10 < len(points) < 60
    assert all(math.isfinite(p.loss) and math.isfinite(p.smoothed_loss) for p in points)
    assert points[0].lr == pytest.approx(1e-6)
    assert all(b.lr > a.lr for a, b in itertools.pairwise(points))


def test_suggest_lr_picks_the_steepest_fall_of_the_smoothed_loss() -> None:
    lrs = np.logspace(-5, 0, 41)
    smoothed = 2.0 - np.tanh(4 * (np.log10(lrs) + 2.5))  # falls fastest at lr = 10**-2.5
    points = [LrRangePoint(lr=lr, loss=s, smoothed_loss=s) for lr, s in zip(lrs, smoothed, strict=True)]
    assert suggest_lr(points) == pytest.approx(10**-2.5)
    assert suggest_lr(points[:12]) is None  # too few points once the ends are skipped
    rising = [LrRangePoint(lr=p.lr, loss=1.0 + i, smoothed_loss=1.0 + i) for i, p in enumerate(points)]
    assert suggest_lr(rising) is None


def _smoothed_points(lrs: np.ndarray, losses: np.ndarray, beta: float = 0.98) -> list[LrRangePoint]:
    # The same bias-corrected smoothing as lr_range_test.
    points, average = [], 0.0
    for step, (lr, loss) in enumerate(zip(lrs, losses, strict=True)):
        average = beta * average + (1 - beta) * loss
        points.append(LrRangePoint(lr=lr, loss=loss, smoothed_loss=average / (1 - beta ** (step + 1))))
    return points


def test_suggest_lr_says_nothing_when_the_loss_never_really_falls() -> None:
    # A CNN from scratch on images within 100 steps (measured on the shapes example): raw losses ln 4 +- noise;
    # the smoothed curve wiggles by < 1%, and its steepest wiggle sat at the start of the range (~5e-6).
    lrs = np.logspace(-6, 0, 100)
    noise = np.random.default_rng(0).normal(0.0, 0.02, 100)
    flat = _smoothed_points(lrs, math.log(4) + noise - np.linspace(0, 0.01, 100))
    assert suggest_lr(flat) is None
    # The same noise over a real fall (ln 4 -> 0.4 between 1e-4 and 1e-2) gives a learning rate in the fall.
    falling = math.log(4) - (math.log(4) - 0.4) * (np.tanh(2 * (np.log10(lrs) + 3)) + 1) / 2
    suggestion = suggest_lr(_smoothed_points(lrs, falling + noise))
    assert suggestion is not None
    assert 1e-4 < suggestion < 1e-2


def test_suggest_lr_picks_before_the_lowest_point_not_in_the_blow_up() -> None:
    lrs = np.logspace(-5, 0, 41)
    smoothed = 2.0 - np.tanh(4 * (np.log10(lrs) + 3))  # falls fastest at 1e-3 (index 16), ~1.0 from 1e-2 on
    smoothed[26:] = 1.0 + 0.8 * np.arange(15)  # then blows up, with one drop steeper than the real fall:
    smoothed[30] = 1.5  # (a steepest-slope pick over the whole curve lands here, at 10**-1.25)
    points = [LrRangePoint(lr=lr, loss=s, smoothed_loss=s) for lr, s in zip(lrs, smoothed, strict=True)]
    assert suggest_lr(points) == pytest.approx(1e-3)


def _outcome(losses: list[float], nonfinite_step: int | None = None) -> OverfitOutcome:
    return OverfitOutcome(
        samples=100,
        steps=len(losses),
        train_acc=0.6,
        reached=False,
        losses=losses,
        prior_loss=2.3,
        nonfinite_step=nonfinite_step,
    )


def test_overfit_diagnoses_by_symptom() -> None:
    diverged = diagnose_overfit(_outcome([2.3, 1.5, 0.9], nonfinite_step=3), 0.99, 1e-3)
    assert diverged is not None
    assert diverged.code == "nan_loss"
    assert "lower it ~10x" in diverged.next_action
    assert "004_e9930d7a8081840b.txt" in diverged.rule_source
    learning = diagnose_overfit(_outcome([2.3, *[0.8] * 10]), 0.99, 1e-3)
    assert learning is not None
    assert learning.code == "not_overfit"
    flat = diagnose_overfit(_outcome([2.3, *[2.2] * 10]), 0.99, 1e-3)
    assert flat is not None
    assert flat.code == "flat_loss"
    assert diagnose_overfit(OverfitOutcome(100, 5, 1.0, True, [2.3, 0.1], 2.3), 0.99, 1e-3) is None


def test_the_sanity_line_shows_a_missed_overfit_target_with_the_digits_that_missed_it() -> None:
    from stagetune.stages.sanity_stage import _overfit_score

    assert _overfit_score(0.9896, 0.99) == "0.9896 < target 0.99"  # not "0.99" next to FAILED
    assert _overfit_score(0.95, 0.99) == "0.95 < target 0.99"
    assert _overfit_score(1.0, 0.99) == "1.00"
