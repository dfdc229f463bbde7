"""What each stage returns: the only thing a later stage (or a person) reads of it."""

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from schemas.base import StrictModel
from schemas.hyperparams import HyperParams, RebalanceStrategy

# Results stored before epoch records carried a metric mapping name their accuracies as fields.
_LEGACY_EPOCH_METRICS = {"train_acc": "train/acc", "val_acc": "val/acc", "val_balanced_acc": "val/balanced_acc"}


class EpochRecord(StrictModel):
    """One epoch of a training run, as logged.

    `metrics` maps MLflow metric names to values; which names depends on the task (classification:
    train/acc, val/acc, val/balanced_acc; regression: train/rmse, train/r2, val/rmse, val/mae, val/r2,
    in the target's original units). The losses are the task's training and plain validation losses.
    """

    epoch: int = Field(ge=0)
    train_loss: float
    val_loss: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    lr: float
    seconds: float = Field(ge=0)

    @model_validator(mode="before")
    @classmethod
    def _legacy_accuracy_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(key in data for key in _LEGACY_EPOCH_METRICS):
            data = dict(data)
            metrics = dict(data.get("metrics") or {})
            for old, new in _LEGACY_EPOCH_METRICS.items():
                value = data.pop(old, None)
                if value is not None:
                    metrics[new] = value
            data["metrics"] = metrics
        return data

    def metric(self, name: str) -> float | None:
        """A metric by MLflow name ("val/rmse"), or by objective name ("val_rmse"); None when absent."""
        return self.metrics.get(name if "/" in name else name.replace("_", "/", 1))

    @property
    def train_acc(self) -> float | None:
        """Training accuracy (classification), else None."""
        return self.metrics.get("train/acc")

    @property
    def val_acc(self) -> float | None:
        """Validation accuracy (classification), else None."""
        return self.metrics.get("val/acc")

    @property
    def val_balanced_acc(self) -> float | None:
        """Validation balanced accuracy (classification), else None."""
        return self.metrics.get("val/balanced_acc")

    def score_pair(self) -> tuple[str, float | None, float | None]:
        """(name, train, validation) of the task's bounded score: accuracy, or R² for regression."""
        if "train/r2" in self.metrics:
            return "R²", self.metrics["train/r2"], self.metrics.get("val/r2")
        return "accuracy", self.metrics.get("train/acc"), self.metrics.get("val/acc")


class DataDefaults(StrictModel):
    """The `auto` settings Stage 1 resolved from the training labels, and why (shown in the report)."""

    skewed: bool = Field(description="Largest/smallest training class ratio at or above search.imbalance_ratio.")
    imbalance_ratio: float | None = Field(
        default=None, description="Rows of the largest training class over the smallest; None for regression."
    )
    objective: str = Field(description="search.objective after resolving auto.")
    champion_metric: str = Field(description="final.champion_metric after resolving auto.")
    balanced_val_loss: bool = Field(
        default=False, description="Validation loss is class-weighted (each class counts equally): skewed classes."
    )
    rebalance: list[str] | None = Field(
        default=None, description="space.rebalance choices auto resolved to (None: as configured)."
    )
    baseline_rebalance: str | None = Field(
        default=None, description="model.baseline.rebalance set for skewed data (None: as configured)."
    )
    cv_folds: int = Field(default=1, ge=1, description="search.cv_folds after resolving auto (1: one split).")
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Image data: the settings the config left unset that Stage 1 chose (budgets, ranges), by dotted "
        "key (stagetune.data.image_defaults).",
    )
    reasons: list[str] = Field(default_factory=list, description="One line per resolved setting.")


class SampleResult(StrictModel):
    """Stage 1 output: the prepared data on disk plus the figures that describe it."""

    source: str
    source_kind: Literal["table", "image_folder", "image_csv", "factory"] = Field(
        default="table",
        description="table: features stored as arrays in data_path; the others: row indices in data_path and the "
        "source described in manifest_path, samples read lazily by the loaders.",
    )
    manifest_path: str | None = Field(
        default=None, description="Indexed sources: JSON describing the source (image files, factory) to reopen it."
    )
    image_mean: list[float] | None = Field(
        default=None,
        description="Image sources: per-channel mean of the [0, 1] training pixels (inputs = (x-mean)/std).",
    )
    image_std: list[float] | None = Field(
        default=None, description="Image sources: per-channel std of the [0, 1] training pixels."
    )
    task: Literal["classification", "regression"] = "classification"
    task_reason: str = Field(default="", description="Why data.task resolved to `task` (auto) or 'set in data.task'.")
    target_names: list[str] = Field(default_factory=list, description="Target column(s).")
    target_mean: list[float] = Field(
        default_factory=list,
        description="Regression: training-split mean per output (targets are stored standardised).",
    )
    target_std: list[float] = Field(default_factory=list, description="Regression: training-split std per output.")
    data_path: str = Field(
        description="npz file with the preprocessed full and sampled splits (indexed sources: their row indices)."
    )
    fingerprint: str = Field(description="sha256 of the raw table and the preprocessing settings.")
    sampled_fingerprint: str = Field(description="sha256 of the sampled training and validation arrays.")
    class_names: list[str]
    num_classes: int = Field(ge=0, description="Classes (classification); 0 for regression.")
    input_shape: list[int] = Field(description="Shape of one example after preprocessing, e.g. [64] or [1, 8, 8].")
    feature_names: list[str]
    n_rows: int = Field(description="Rows in the source table.")
    n_train: int
    n_val: int
    n_test: int
    n_train_sampled: int
    n_val_sampled: int
    class_counts_train: dict[str, int] = Field(description="Full training split, per class.")
    class_counts_sampled: dict[str, int] = Field(description="After subsampling (and class subset).")
    class_counts_rebalanced: dict[str, int] = Field(
        description="Effective per-class examples one epoch sees under the configured strategy."
    )
    rebalance: RebalanceStrategy
    class_weights: list[float] | None = Field(default=None, description="Loss weights (class_weights strategy).")
    sampled_class_names: list[str] = Field(
        default_factory=list,
        description="Classes of the *_sampled arrays (labels 0..K-1): sample.classes if set, else class_names.",
    )
    dropped_columns: list[str] = Field(default_factory=list, description="Constant or all-missing feature columns.")
    dropped_label_rows: int = Field(
        default=0, ge=0, description="Rows dropped because their label (or regression target) was missing."
    )
    warnings: list[str] = Field(default_factory=list, description="Data problems fixed on the way, one per line.")
    input_mean: list[float] | None = Field(
        default=None,
        description="Images: the mean Stage 1 subtracted per pixel (or per channel), so augmentation can flip and "
        "shift in pixel units; None: inputs are fed as they are.",
    )
    input_scale: list[float] | None = Field(
        default=None, description="Images: the scale Stage 1 divided by, per pixel (or per channel)."
    )
    defaults: DataDefaults | None = Field(
        default=None, description="The auto settings resolved from the labels (None: stored by an older version)."
    )

    @model_validator(mode="before")
    @classmethod
    def _default_sampled_class_names(cls, data: Any) -> Any:
        # Without a class subset the sampled arrays use the full label set; say so explicitly.
        if (
            isinstance(data, dict)
            and not data.get("sampled_class_names")
            and data.get("class_names")
            and data.get("task", "classification") == "classification"
        ):
            return {**data, "sampled_class_names": data["class_names"]}
        return data


class Diagnosis(StrictModel):
    """A failed check, what it most likely means, and what to do about it."""

    check: Literal["initial_loss", "overfit"]
    code: Literal["nan_loss", "flat_loss", "initial_loss_off", "not_overfit"]
    message: str
    next_action: str
    rule_source: str = Field(description="Where the practitioner rule comes from (TUNING-RULES.md).")


class LrRangePoint(StrictModel):
    """One step of the LR range test."""

    lr: float
    loss: float
    smoothed_loss: float


class BaselineFit(StrictModel):
    """A short training of the configured baseline hyperparameters: the reference the search must beat."""

    hyperparams: HyperParams
    status: Literal["completed", "diverged", "early_stopped", "stopped"]
    reason: str | None = None
    history: list[EpochRecord] = Field(default_factory=list)


class SanityResult(StrictModel):
    """Stage 2 output."""

    # A broken model's initial loss can be NaN/inf: write it as "NaN"/"Infinity" so the JSON reads back.
    model_config = ConfigDict(**StrictModel.model_config, ser_json_inf_nan="strings")

    passed: bool
    num_classes: int
    task: Literal["classification", "regression"] = "classification"
    expected_initial_loss: float = Field(
        description="ln(num_classes); regression: the loss of a zero output on the standardised targets (~1 for MSE)"
    )
    initial_loss: float
    initial_loss_ok: bool
    overfit_samples: int
    overfit_steps: int
    overfit_train_acc: float = Field(description="Score reached on the overfit subset: accuracy, or R² (regression).")
    overfit_ok: bool
    overfit_target: float | None = Field(
        default=None,
        description="The score that counted as memorised: sanity.overfit_target_acc, lowered by the task when "
        "identical inputs carry different targets (None: results written before it was recorded).",
    )
    overfit_losses: list[float] = Field(description="Training loss per step of the overfit test.")
    lr_suggestion: float | None = None
    lr_range: list[LrRangePoint] = Field(default_factory=list)
    diagnoses: list[Diagnosis] = Field(default_factory=list)
    seconds: float = Field(ge=0)
    baseline: BaselineFit | None = Field(default=None, description="Set when the gate passed and baseline_epochs > 0.")
