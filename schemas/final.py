"""Stage 5 contracts: test-set metrics, learning-curve diagnosis, registry decisions, the final result."""

from typing import Literal, Self

from pydantic import ConfigDict, Field, model_validator

from schemas.base import StrictModel
from schemas.hyperparams import HyperParams
from schemas.results import EpochRecord

# A diverged model's loss is NaN/inf: such floats are written as "NaN"/"Infinity" so the JSON reads back.
_NAN_SAFE = ConfigDict(**StrictModel.model_config, ser_json_inf_nan="strings")

CurveCode = Literal["diverged", "collapsed", "overfitting", "underfitting", "not_converged", "ok", "insufficient"]


class ClassReport(StrictModel):
    """Test-set precision, recall and F1 of one class (0 where undefined), and its number of true examples."""

    name: str
    precision: float = Field(ge=0, le=1)
    recall: float = Field(ge=0, le=1)
    f1: float = Field(ge=0, le=1)
    support: int = Field(ge=0)


class TestMetrics(StrictModel):
    """A classifier's metrics on the held-out test split."""

    model_config = _NAN_SAFE
    __test__ = False  # not a pytest test class, despite the name

    task: Literal["classification"] = "classification"
    loss: float = Field(description="Mean (unweighted) cross-entropy; NaN/inf if the model's outputs are.")
    accuracy: float = Field(ge=0, le=1)
    balanced_accuracy: float = Field(ge=0, le=1, description="Mean recall over the classes present in the test set.")
    macro_f1: float = Field(ge=0, le=1, description="Mean F1 over the classes that are true or predicted.")
    per_class: list[ClassReport]
    confusion_matrix: list[list[int]] = Field(description="Counts; row = true class, column = predicted class.")
    class_names: list[str] = Field(min_length=2)
    n_samples: int = Field(ge=1)

    @model_validator(mode="after")
    def _check_shapes(self) -> Self:
        size = len(self.class_names)
        if len(self.per_class) != size or [r.name for r in self.per_class] != self.class_names:
            raise ValueError("per_class must hold one row per class, in class_names order")
        if len(self.confusion_matrix) != size or any(len(row) != size for row in self.confusion_matrix):
            raise ValueError(f"confusion_matrix must be {size} x {size}")
        if sum(map(sum, self.confusion_matrix)) != self.n_samples:
            raise ValueError("confusion_matrix counts must add up to n_samples")
        return self

    def summary_metrics(self) -> dict[str, float]:
        """Flat name -> value for the summary JSON and the parent run."""
        return {k: float(getattr(self, k)) for k in ("accuracy", "balanced_accuracy", "macro_f1", "loss")}


class OutputMetrics(StrictModel):
    """Regression metrics of one output column, in its original units."""

    name: str
    rmse: float
    mae: float
    r2: float


class RegressionTestMetrics(StrictModel):
    """A regressor's metrics on the held-out test split, in the targets' original units.

    With several outputs, rmse/mae/r2 are the means over the outputs (scikit-learn's uniform average)
    and `per_output` holds each one.
    """

    model_config = _NAN_SAFE
    __test__ = False

    task: Literal["regression"] = "regression"
    loss: float = Field(description="Mean training loss (on standardised targets); NaN/inf if the outputs are.")
    rmse: float
    mae: float
    r2: float
    per_output: list[OutputMetrics] = Field(min_length=1)
    n_samples: int = Field(ge=1)
    y_true: list[list[float]] = Field(default_factory=list, description="Test targets (original units), per row.")
    y_pred: list[list[float]] = Field(default_factory=list, description="Predictions (original units), per row.")

    def summary_metrics(self) -> dict[str, float]:
        """Flat name -> value for the summary JSON and the parent run: r2, rmse, mae, loss, then per output."""
        out = {"r2": self.r2, "rmse": self.rmse, "mae": self.mae, "loss": self.loss}
        if len(self.per_output) > 1:
            for row in self.per_output:
                out |= {f"{row.name}.r2": row.r2, f"{row.name}.rmse": row.rmse, f"{row.name}.mae": row.mae}
        return out


class CurveDiagnosisSettings(StrictModel):
    """Thresholds of the learning-curve diagnosis, read on train vs validation loss for every task.

    Loss shares are taken of the run's reference loss: the loss a freshly initialised model starts
    from (classification: ln C; regression: the loss of a zero output on standardised targets, ~1 per
    output for MSE). On MSE regression a share of the reference is 1 - R² (so `overfit_gap` is the
    train-minus-validation R² gap and `underfit_loss_share` a train R² floor); on classification it is
    one minus McFadden's pseudo-R² against the uniform guess. See stagetune/diagnosis/curves.py for why.
    """

    overfit_gap: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="Final validation minus training loss above this share of the reference loss.",
    )
    val_rise: float = Field(default=0.1, gt=0, description="Final val loss this share above its minimum.")
    underfit_loss_share: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="Final training and validation loss both above this share of the reference loss.",
    )
    val_rise_floor: float = Field(
        default=0.02,
        ge=0,
        lt=1,
        description="A validation-loss rise (or gap) must also exceed this share of the reference loss to count: "
        "a rise from 0.026 to 0.031 on ln 10 is no reason to regularise.",
    )
    noise_z: float = Field(
        default=2.0,
        ge=0,
        description="A rise or gap counts only above this many standard errors of the validation loss (estimated "
        "from the validation size and the epoch-to-epoch jitter; see stagetune/diagnosis/noise.py).",
    )
    underfit_plateau: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="Underfitting needs the training loss to have flattened: a last-epoch drop above this share "
        "means the run was cut short (not converged), not short of capacity.",
    )
    still_improving: float = Field(default=0.01, ge=0, description="Relative val-loss drop over the last epoch.")
    explode_ratio: float = Field(default=3.0, gt=1, description="Final train loss this many times the first.")
    collapse_share: float = Field(
        default=0.97,
        gt=0.5,
        le=1,
        description="Collapsed: at the epoch kept, one class predicted for at least this share of the validation "
        "rows while it holds less than this share of their labels.",
    )


class CurveDiagnosis(StrictModel):
    """What the learning curves of one run say, and what to try next."""

    code: CurveCode
    message: str
    next_action: str
    rule_source: str = Field(description="Where the practitioner rule comes from (TUNING-RULES.md).")


class StageDiagnosisSummary(StrictModel):
    """The curve diagnoses of a stage's runs, counted, with the most common problem and its remedy.

    `verdict` is the stage's diagnosis a practitioner acts on: a problem shared by a clear majority of the
    stage's best trials (`top_trials`), not the most common one among all runs (a poor corner of the space
    underfits whatever the best settings do).
    """

    counts: dict[str, int]
    dominant: str | None = Field(description="Most common problem code (not ok/insufficient); None if none.")
    message: str
    top_trials: list[int] = Field(default_factory=list, description="The best trials the verdict is read from.")
    top_counts: dict[str, int] = Field(default_factory=dict, description="Diagnosis codes among `top_trials`.")
    verdict: CurveCode | None = Field(
        default=None, description="A problem shared by a clear majority of the best trials; None: no clear verdict."
    )
    agreement: str = Field(default="", description="How many of the best trials agree, e.g. '3 of 4'.")


class ChampionDecision(StrictModel):
    """Where a newly registered model version stands against the registered model's champion."""

    model_config = _NAN_SAFE

    model_name: str
    version: int = Field(ge=1)
    alias: Literal["champion", "challenger"]
    decision: Literal["promoted", "kept_challenger"]
    reason: str
    previous_champion_version: int | None = None
    previous_metric: float | None = None
    metric_name: str
    metric_value: float


class EnsembleMember(StrictModel):
    """One network of the final ensemble: its seed and how its training ended."""

    model_config = _NAN_SAFE

    seed: int
    epochs_run: int = Field(ge=0)
    best_epoch: int | None = None
    stopped: Literal["completed", "early_stopped", "diverged", "stopped"]
    best_val_loss: float | None = None


class FinalResult(StrictModel):
    """Stage 5 output: the final training run, its test metrics, diagnosis, checkpoint and registry decision.

    With `final.ensemble` > 1 the curve, epochs and diagnosis are the first member's (the seed of a single
    network), `members` lists every member, and the test metrics are the ensemble's."""

    model_config = _NAN_SAFE

    hyperparams: HyperParams
    epochs_run: int = Field(ge=0)
    stopped: Literal["completed", "early_stopped", "diverged", "stopped"]
    stop_reason: str | None = None
    best_epoch: int | None = None
    history: list[EpochRecord] = Field(default_factory=list)
    test: TestMetrics | RegressionTestMetrics
    diagnosis: CurveDiagnosis
    checkpoint_artifact: str = Field(description="Artifact path of the checkpoint in the final run.")
    registry: ChampionDecision | None = None
    mlflow_run_id: str | None = None
    members: list[EnsembleMember] = Field(default_factory=list)
    ensemble_rule: str | None = Field(default=None, description="Why the ensemble has as many members as it has.")
