"""The one config object: every setting of a pipeline run, validated once at the edge."""

import os
import re
from collections.abc import Mapping
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from schemas.base import StrictModel
from schemas.hyperparams import (
    ARCHITECTURE_FIELDS,
    HyperParams,
    LossName,
    ParamMapping,
    ParamValue,
    ParamValues,
    RebalanceStrategy,
)
from schemas.search import DiagnosisShiftSettings, NarrowingSettings
from schemas.search_space import CategoricalParam, FloatParam, SearchSpace, is_power_of_two
from schemas.task import (
    TASK_CHAMPION_METRICS,
    TASK_OBJECTIVES,
    SyntheticRegressionConfig,
    TaskChoice,
)
from schemas.urls import refuse_credentials, storage_url_problem, tracking_uri_problem

BUILTIN_DATASETS = (
    "digits",
    "breast_cancer",
    "iris",
    "wine",
    "synthetic_imbalanced",
    "diabetes",
    "synthetic_regression",
)


class SyntheticDataConfig(StrictModel):
    """Settings of the `builtin:synthetic_imbalanced` generator (scikit-learn's make_classification)."""

    n_samples: int = Field(default=4000, ge=20, le=10_000_000)
    n_features: int = Field(default=20, ge=2, le=10_000)
    n_informative: int = Field(default=8, ge=1)
    class_weights: list[float] = Field(default=[0.95, 0.05], min_length=2)
    class_sep: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.n_informative > self.n_features:
            raise ValueError(f"n_informative ({self.n_informative}) exceeds n_features ({self.n_features})")
        if any(w <= 0 for w in self.class_weights) or abs(sum(self.class_weights) - 1) > 1e-6:
            raise ValueError(f"class_weights must be positive and sum to 1, got {self.class_weights}")
        return self


class DataConfig(StrictModel):
    """Where the data comes from and how it is split."""

    source: str = Field(
        default="builtin:digits",
        description="builtin:<name> (digits, breast_cancer, iris, wine, synthetic_imbalanced, diabetes, "
        "synthetic_regression), "
        "a path / s3:// URI to a .csv or .parquet file, an image folder (DIR/ with one subfolder of PNG/JPEG "
        "files per class), or py:package.module:factory (a function returning torch Datasets)",
    )
    image_column: str | None = Field(
        default=None,
        description="CSV source: the column of image paths (relative to the CSV's folder); the data.target columns "
        "are then the targets of each image (e.g. keypoint coordinates).",
    )
    image_size: int | list[int] | None = Field(
        default=None,
        description="Image sources: resize every image to this size (N for N x N, or [H, W]); None: the size of "
        "the first image.",
    )
    image_mode: Literal["auto", "grayscale", "rgb"] = Field(
        default="auto",
        description="Image sources: decode as 1-channel grayscale or 3-channel RGB; auto: grayscale when the "
        "first images are stored as grayscale, else RGB.",
    )
    target: str | list[str] | None = Field(
        default=None,
        description="Target column of a CSV/Parquet source; a list of columns is a multi-output regression.",
    )
    task: TaskChoice = Field(
        default="auto",
        description="auto: non-numeric, boolean, or integer targets with few distinct values are classification; "
        "float targets (or integers with many distinct values) are regression.",
    )
    synthetic_regression: SyntheticRegressionConfig = SyntheticRegressionConfig()
    features: list[str] | None = Field(default=None, description="Feature columns; default: all but target.")
    categorical: list[str] | None = Field(
        default=None, description="Columns to one-hot encode; default: non-numeric columns."
    )
    val_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    synthetic: SyntheticDataConfig = SyntheticDataConfig()

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        if value.startswith("builtin:"):
            name = value.removeprefix("builtin:")
            if name not in BUILTIN_DATASETS:
                raise ValueError(f"unknown builtin dataset {name!r}: use one of {', '.join(BUILTIN_DATASETS)}")
            return value
        if value.startswith("py:"):
            if not re.fullmatch(r"py:[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", value):
                raise ValueError(f"{value!r} is not py:package.module:factory (a function returning torch Datasets)")
            return value
        if re.search(r"://[^/@\s]*:[^/@\s]*@", value):
            # data.source is logged as an MLflow param; S3 keys come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.
            raise ValueError(
                "holds a password: give the URI without credentials and put them in the environment "
                "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for s3://)"
            )
        if is_folder_source(value):
            if "://" in value:
                raise ValueError(f"{value!r}: an image folder must be a local path (copy it here first)")
            return value
        if not re.search(r"\.(csv|parquet|pq)(\.gz)?$", value, flags=re.IGNORECASE):
            raise ValueError(
                f"{value!r} is neither builtin:<name>, a .csv/.parquet path or s3:// URI, an image folder "
                "(end it with /) nor py:package.module:factory"
            )
        return value

    @field_validator("image_size")
    @classmethod
    def _check_image_size(cls, value: int | list[int] | None) -> int | list[int] | None:
        sizes = [value] if isinstance(value, int) else value or []
        if isinstance(value, list) and len(value) != 2:
            raise ValueError(f"image_size {value} must be one size N or [H, W]")
        if any(not 1 <= size <= 4096 for size in sizes):
            raise ValueError(f"image_size {value} must be between 1 and 4096 pixels")
        return value

    @property
    def image_hw(self) -> tuple[int, int] | None:
        """data.image_size as (height, width); None when unset."""
        if self.image_size is None:
            return None
        if isinstance(self.image_size, int):
            return self.image_size, self.image_size
        return self.image_size[0], self.image_size[1]

    @property
    def source_kind(self) -> Literal["table", "image_folder", "image_csv", "factory"]:
        """Which data source reads `source`: an in-memory table, an image folder or CSV, or a Dataset factory."""
        if self.source.startswith("py:"):
            return "factory"
        if not self.source.startswith("builtin:") and is_folder_source(self.source):
            return "image_folder"
        if self.image_column is not None:
            return "image_csv"
        return "table"

    @property
    def target_columns(self) -> list[str] | None:
        """data.target as a list (None when unset)."""
        if self.target is None:
            return None
        return [self.target] if isinstance(self.target, str) else list(self.target)

    @model_validator(mode="after")
    def _check_target(self) -> Self:
        if isinstance(self.target, list):
            if not self.target or len(set(self.target)) != len(self.target):
                raise ValueError(f"data.target {self.target} must list distinct column names")
            if len(self.target) > 1 and self.task == "classification":
                raise ValueError("several data.target columns make a multi-output regression: set data.task regression")
        kind = self.source_kind
        if kind in ("table", "image_csv") and not self.source.startswith("builtin:") and not self.target:
            raise ValueError("data.target is required for a file source: name the label column")
        if kind in ("image_folder", "factory") and self.target is not None:
            raise ValueError(
                f"data.target is not used with {'an image folder' if kind == 'image_folder' else 'a py: factory'} "
                "(the labels are the class subfolders / the datasets' targets): remove it"
            )
        if self.image_column is not None and (
            self.source.startswith(("builtin:", "py:")) or not re.search(r"\.csv(\.gz)?$", self.source, re.IGNORECASE)
        ):
            raise ValueError(
                "data.image_column needs a .csv source listing image paths: remove it or point "
                "data.source at such a CSV"
            )
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError("val_fraction + test_fraction must leave at least 20% of the rows for training")
        return self


def is_folder_source(source: str) -> bool:
    """A data.source naming a folder: ends with a slash, or is an existing local directory."""
    return source.endswith(("/", os.sep)) or ("://" not in source and os.path.isdir(os.path.expanduser(source)))


class SampleConfig(StrictModel):
    """Stage 1: the reduced problem the search tunes on, and how classes are rebalanced."""

    fraction: float = Field(default=1.0, gt=0, le=1, description="Share of training rows kept (stratified).")
    max_rows: int | None = Field(default=10_000, ge=10, description="Cap on sampled training rows.")
    classes: list[str] | None = Field(
        default=None, min_length=2, description="Tune on these classes only (labels as strings)."
    )
    rebalance: RebalanceStrategy = "none"
    oversample_ratio: float = Field(
        default=1.0, gt=0, le=1, description="oversample: each class grows to this share of the largest."
    )


class ModelConfig(StrictModel):
    """The model family and the baseline hyperparameters used before (and outside) the search."""

    family: str = Field(
        default="mlp",
        pattern=r"^[a-z][a-z0-9_]{0,63}$",
        description="A registered model family: mlp, cnn or custom (stagetune.models.registry lists them).",
    )
    import_path: str | None = Field(
        default=None,
        description="custom family: 'package.module:factory', called as factory(hp, input_shape, num_classes)",
    )
    baseline: HyperParams = HyperParams()
    params: ParamMapping = Field(
        default_factory=ParamValues,
        description="custom family: baseline values of the model's own hyperparameters, by name (the factory reads "
        "hp.params['name']); each needs a search range in space.params.",
    )
    uses: list[str] = Field(
        default_factory=list,
        description="custom family: the built-in model hyperparameters its factory reads "
        f"({', '.join(ARCHITECTURE_FIELDS)}), searched like mlp/cnn ones; the optimizer's and the data feed's "
        "are always searched.",
    )

    @model_validator(mode="after")
    def _check_custom(self) -> Self:
        if self.family == "custom":
            if not self.import_path or not re.fullmatch(r"[\w.]+:[\w.]+", self.import_path):
                raise ValueError("family 'custom' needs import_path as 'package.module:factory'")
        elif self.import_path is not None:
            raise ValueError(f"import_path is only used with family 'custom', not {self.family!r}: remove it")
        elif self.uses:
            raise ValueError(
                f"model.uses is only read with family 'custom' ({self.family!r} knows what it reads): remove it"
            )
        unknown = sorted(set(self.uses) - set(ARCHITECTURE_FIELDS))
        if unknown or len(set(self.uses)) != len(self.uses):
            raise ValueError(f"model.uses {self.uses} must name distinct fields among {list(ARCHITECTURE_FIELDS)}")
        if self.baseline.params:
            raise ValueError(
                "model.baseline.params is set: give the model's own hyperparameters in model.params (and their ranges "
                "in space.params)"
            )
        if not is_power_of_two(self.baseline.channels):
            raise ValueError(
                f"model.baseline.channels = {self.baseline.channels} is not a power of two: use e.g. 16, 32 or 64"
            )
        return self

    @property
    def baseline_hyperparams(self) -> HyperParams:
        """The baseline with the model's own hyperparameters (`model.params`) in it: what the baseline trains."""
        return self.baseline.model_copy(update={"params": ParamValues(self.params)})


class AugmentConfig(StrictModel):
    """How training batches are augmented when a run's `augment` hyperparameter is on.

    Whether to augment is the hyperparameter (model.baseline.augment, space.augment); this section says
    how. Applied on the device to training batches only: never to validation, test or sanity checks.
    Flip and shift need images; tabular data takes noise only.
    """

    flip_probability: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Chance that an image is mirrored left-right. Coordinate targets (<point>_x/_y columns in "
        "[-1, 1]) follow: x -> -x, and the flip_pairs swap. Wrong for data whose label changes under a mirror "
        "(digits, text).",
    )
    max_shift: int = Field(
        default=0,
        ge=0,
        le=4096,
        description="Images move by up to this many pixels along each axis (uniform, per image); coordinate "
        "targets move with them.",
    )
    padding: Literal["zeros", "reflect", "replicate"] = Field(
        default="zeros", description="What fills the pixels a shift uncovers (zeros: black, in pixel units)."
    )
    noise_std: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description="Std of Gaussian noise added to the inputs as the model sees them (standardised units).",
    )
    flip_pairs: list[tuple[str, str]] = Field(
        default_factory=list,
        description="Left/right target pairs a flip swaps: point names ([left_eye, right_eye] swaps left_eye_x "
        "with right_eye_x and left_eye_y with right_eye_y) or target column names. Checked against the data's "
        "target columns at Stage 1.",
    )

    @model_validator(mode="after")
    def _check_pairs(self) -> Self:
        names = [name for pair in self.flip_pairs for name in pair]
        if any(left == right for left, right in self.flip_pairs):
            raise ValueError(f"flip_pairs {self.flip_pairs} pair a name with itself: pair a left with a right name")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"flip_pairs name {repeated} in more than one pair: a point swaps with one partner")
        return self

    @property
    def transforms(self) -> bool:
        """True if any transform is configured (flip, shift or noise)."""
        return self.flip_probability > 0 or self.max_shift > 0 or self.noise_std > 0


class TrainingConfig(StrictModel):
    """Settings shared by every training run (sanity, trials, final)."""

    grad_clip_norm: float | None = Field(default=5.0, gt=0, description="Clip the global gradient norm.")
    loss: LossName = Field(
        default="auto",
        description="auto: cross-entropy for classification, MSE for regression; huber and l1 are for regression "
        "(on standardised targets, so Huber's delta of 1 is one standard deviation).",
    )
    max_batches_per_epoch: int | None = Field(default=None, ge=1, description="Debug: cut epochs short.")


class SanityConfig(StrictModel):
    """Stage 2: checks that must pass before any search burns compute."""

    enabled: bool = True
    init_loss_rel_tolerance: float = Field(default=0.5, gt=0, description="Allowed |initial loss - ln(C)| / ln(C).")
    overfit_samples: int = Field(default=100, ge=2)
    overfit_batch_size: int = Field(default=50, ge=1)
    overfit_max_steps: int = Field(
        default=1000,
        ge=1,
        description="A passing check stops as soon as it reaches its target (digits: ~40 steps); regression "
        "subsets of real data, with ties in their inputs, take several hundred.",
    )
    overfit_target_acc: float = Field(default=0.99, gt=0, le=1, description="Regression: the target R².")
    overfit_width: int = Field(default=512, ge=1)
    overfit_depth: int = Field(default=3, ge=1)
    overfit_learning_rate: float = Field(default=1e-3, gt=0)
    lr_range_test: bool = True
    lr_range_min: float = Field(default=1e-6, gt=0)
    lr_range_max: float = Field(default=1.0, gt=0)
    lr_range_steps: int = Field(default=100, ge=10)
    baseline_epochs: int = Field(
        default=5, ge=0, le=1000, description="Train the baseline hyperparameters this long as a reference (0: skip)."
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.lr_range_min >= self.lr_range_max:
            raise ValueError("lr_range_min must be below lr_range_max")
        return self


ResolvedObjective = Literal["val_loss", "val_acc", "val_balanced_acc", "val_rmse", "val_mae", "val_r2"]


class SearchConfig(StrictModel):
    """What the searches optimise and where Optuna keeps its studies."""

    objective: Literal["auto", "val_loss", "val_acc", "val_balanced_acc", "val_rmse", "val_mae", "val_r2"] = Field(
        default="auto",
        description="Validation metric a trial is judged by (its best epoch). auto, resolved at Stage 1 from the "
        "training labels: val_loss (smoother than accuracy), class-weighted when the classes are skewed (see "
        "imbalance_ratio); val_rmse for regression that tunes its loss. val_acc/val_balanced_acc are for "
        "classification, val_rmse/val_mae/val_r2 (original units) for regression.",
    )
    imbalance_ratio: float = Field(
        default=2.5,
        ge=1.0,
        le=1e6,
        description="The classes count as skewed when the largest class of the training split has at least this "
        "many times the rows of the smallest. Skewed data get a class-weighted validation loss and, where left "
        "at auto, balanced_accuracy as the champion metric and class-weighted training (space.rebalance auto: "
        "class_weights; model.baseline.rebalance none becomes class_weights too).",
    )
    cv_folds: Literal["auto"] | Annotated[int, Field(ge=0, le=20)] = Field(
        default="auto",
        description="k-fold cross-validation for small data: a trial's score is the mean over k folds of its "
        "training and validation rows, and the final training takes its epoch count from the folds (then trains "
        "on both splits without early stopping). 0 or 1: one validation split. auto: 5 folds when the training "
        "split has fewer than small_data_rows rows, else one split.",
    )
    small_data_rows: int = Field(
        default=200,
        ge=0,
        description="auto cv_folds: below this many training rows (the default 15% validation split then holds "
        "fewer than ~45 rows, where one row moves accuracy by more than 2 points) one split is too noisy to rank "
        "trials or stop training.",
    )
    storage: str | None = Field(
        default=None,
        description="Optuna storage: journal:///path (an Optuna journal file, one machine), sqlite:///path.db, or "
        "postgresql+psycopg://user@host/db (several machines). None: the journal file <workdir>/optuna.journal, "
        "or <workdir>/optuna.db when an earlier stagetune left one there (its runs resume from it).",
    )
    study_name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
        description="Studies are <study_name>-coarse and <study_name>-refine (so `stagetune worker --study` "
        "can join them); None: a fresh name per run.",
    )

    heartbeat_seconds: int = Field(
        default=10,
        ge=1,
        le=3600,
        description=(
            "How often a running trial's process records a heartbeat in an SQLite or PostgreSQL study (a journal "
            "keeps none), and how often the search loop looks for trials whose process died."
        ),
    )
    stale_after_seconds: int = Field(
        default=60,
        ge=2,
        le=86_400,
        description="A running trial without a heartbeat for this long is marked FAIL (its process died) and "
        "retried with the same parameters. Must exceed heartbeat_seconds.",
    )
    max_retries: int = Field(
        default=2, ge=0, le=100, description="Retries of a trial whose process died (a diverged trial is not retried)."
    )
    sync_window: int = Field(
        default=4,
        ge=1,
        le=1024,
        description="Trials are decided in windows of this many: the sampler and the pruner of trial n see exactly "
        "the trials numbered below (n // sync_window) * sync_window, and trial n is not started before all of those "
        "have finished. What a model-based sampler (TPE, GP) draws and what the pruner decides then no longer "
        "depend on which trials happened to finish first, so the same config and seed give the same trials at any "
        "execution.concurrency (and with stagetune workers). The cost: a barrier every sync_window trials, where "
        "the last trial of a window keeps the others waiting. 1: every trial sees all earlier ones (trials run one "
        "at a time). Concurrency above sync_window is capped by it (at most sync_window trials can run at once).",
    )

    @model_validator(mode="after")
    def _check_heartbeat(self) -> Self:
        if self.stale_after_seconds <= self.heartbeat_seconds:
            raise ValueError(
                f"search.stale_after_seconds ({self.stale_after_seconds}) must exceed search.heartbeat_seconds "
                f"({self.heartbeat_seconds}), or live trials would be taken for dead ones: raise it to at least "
                f"{2 * self.heartbeat_seconds}"
            )
        return self

    @field_validator("storage")
    @classmethod
    def _check_storage(cls, value: str | None) -> str | None:
        refuse_credentials(value, "STAGETUNE_OPTUNA_STORAGE")
        problem = None if value is None else storage_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @property
    def resolved_objective(self) -> ResolvedObjective:
        """The objective once Stage 1 resolved `auto` (stagetune.data.defaults); ValueError before."""
        if self.objective == "auto":
            raise ValueError(
                "search.objective 'auto' is resolved at Stage 1 from the labels: run the stages on "
                "stagetune.data.defaults.with_data_defaults(config, sample)"
            )
        return self.objective

    @property
    def resolved_cv_folds(self) -> int:
        """Folds once Stage 1 resolved `auto` (1: one validation split); ValueError before."""
        if self.cv_folds == "auto":
            raise ValueError("search.cv_folds 'auto' is resolved at Stage 1 from the training split's size")
        return max(1, self.cv_folds)

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        """Optuna's direction for the (resolved) objective."""
        objective = self.resolved_objective
        lower = any(table.get(objective, False) for table in TASK_OBJECTIVES.values())
        return "minimize" if lower else "maximize"


class CoarseConfig(StrictModel):
    """Stage 3: wide random or quasi-random search with few epochs."""

    n_trials: int = Field(default=20, ge=1, le=100_000)
    epochs: int = Field(default=3, ge=1, le=10_000)
    sampler: Literal["random", "qmc"] = "random"
    train_fraction: float = Field(
        default=0.5, gt=0, le=1, description="Share of the sampled training rows a coarse trial trains on."
    )
    center_lr_on_range_test: bool = Field(
        default=False,
        description="Centre each optimizer's learning-rate range on the sanity stage's LR suggestion "
        "(same width in log space).",
    )
    reuse_champion: bool = Field(
        default=True,
        description="When the registered model has a champion, enqueue its hyperparameters as a first coarse "
        "trial (if the space contains them); it counts toward n_trials.",
    )
    reuse_previous: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Enqueue this many of the previous finished run's best trials (refinement first, then "
        "coarse) as first coarse trials, those the space still contains; they count toward n_trials.",
    )


class RefineConfig(StrictModel):
    """Stage 4: narrowed, warm-started Bayesian search with pruning."""

    n_trials: int = Field(default=20, ge=0, le=100_000)
    epochs: int = Field(default=8, ge=1, le=10_000)
    sampler: Literal["tpe", "gp"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    narrowing: NarrowingSettings = NarrowingSettings()
    # Issue 17: the coarse verdict moves the narrowed ranges (its own section: stagetune/search/diagnosis_shift.py).
    diagnosis_shift: DiagnosisShiftSettings = DiagnosisShiftSettings()
    warm_start: int = Field(
        default=3, ge=0, description="Enqueue this many of the best coarse trials as the first refinement trials."
    )
    train_data: Literal["sampled", "full"] = Field(
        default="sampled", description="Refinement trials train on all sampled rows, or the full training split."
    )


class FinalConfig(StrictModel):
    """Stage 5: training on the full data with early stopping and LR decay."""

    max_epochs: int = Field(default=50, ge=1, le=100_000)
    champion_metric: Literal["auto", "accuracy", "balanced_accuracy", "macro_f1", "rmse", "mae", "r2"] = Field(
        default="auto",
        description="Test metric that decides whether the new model becomes the champion; auto: accuracy for "
        "classification (balanced_accuracy when the classes are skewed, see search.imbalance_ratio), rmse "
        "(lower wins) for regression.",
    )
    early_stopping_patience: int = Field(default=5, ge=1)
    lr_plateau_factor: float = Field(default=0.5, gt=0, lt=1)
    lr_plateau_patience: int = Field(default=2, ge=0)
    ensemble: int = Field(
        default=5,
        ge=1,
        le=50,
        description="At most this many networks trained with the chosen hyperparameters from different seeds "
        "(seed, seed + 1, ...); the registered model predicts their mean (class probabilities, or regression "
        "outputs). 1: a single network. Members after the first are trained only within ensemble_budget.",
    )
    ensemble_budget: float = Field(
        default=0.5,
        ge=0,
        le=100,
        description="Compute the members after the first may take, as a share of the coarse and refinement "
        "stages' training (epochs x rows, each fold counted on small data): each costs what the first member "
        "took, so an ensemble never costs more than this share of the search beyond one network. 0: one network.",
    )


class TrackingConfig(StrictModel):
    """Where MLflow records runs. None: a local SQLite store under execution.workdir."""

    uri: str | None = None
    experiment: str = Field(default="stagetune", min_length=1)
    registered_model: str | None = Field(default=None, description="Model Registry name; None: the config's name.")
    trial_plots: bool = Field(default=True, description="Log a learning-curve plot (SVG) for every trial.")
    report: bool = Field(default=True, description="Write the tuning report at the end of every run.")
    system_metrics: bool = Field(
        default=True, description="Record CPU, memory (and GPU, with nvidia-ml-py) on trial and final runs."
    )
    system_metrics_interval: float = Field(
        default=10.0, ge=0.5, le=3600, description="Seconds between system readings (a trial shorter gets one)."
    )
    io_retry_seconds: float = Field(
        default=180.0,
        ge=0,
        le=3600,
        description="How long an MLflow/S3 call (metrics, params, artifacts) is retried with exponential backoff "
        "before the failure counts; covers a tracking server or object store that is briefly unreachable.",
    )

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: str | None) -> str | None:
        refuse_credentials(value, "MLFLOW_TRACKING_URI")
        problem = None if value is None else tracking_uri_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class ExecutionConfig(StrictModel):
    """Where and how work runs."""

    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    concurrency: int = Field(default=1, ge=1, le=256)
    amp_bf16: bool = Field(default=False, description="bf16 autocast on CUDA.")
    cpu_threads_per_trial: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="torch CPU threads each trial computes with; None: the cores divided by concurrency. The thread "
        "count changes the order of sums inside matrix products and reductions, so trials agree bit for bit across "
        "concurrency settings (and machines) only at one fixed count.",
    )
    deterministic: bool = Field(
        default=False,
        description="Deterministic kernels (torch.use_deterministic_algorithms, cuDNN deterministic and no "
        "benchmark, CUBLAS_WORKSPACE_CONFIG): on CUDA the same seed then gives the same trials bit for bit, at "
        "some speed; an op without a deterministic kernel fails naming itself. CPU runs repeat without it.",
    )
    workdir: str = Field(default="stagetune-runs", min_length=1, description="Local stores and stage outputs.")
    task_runner: Literal["threads", "dask"] = Field(
        default="threads", description="Where trial tasks run: a thread pool, or a Dask cluster."
    )
    dask_address: str | None = Field(
        default=None, description="Dask scheduler address (tcp://host:8786); None: a LocalCluster."
    )
    dask_workers: int = Field(default=2, ge=1, le=1024, description="Workers of the LocalCluster.")
    gpus_per_trial: int = Field(default=0, ge=0, le=16, description="Dask resource annotation per trial task.")
    num_workers: int = Field(
        default=2,
        ge=0,
        le=64,
        description="DataLoader worker processes that decode samples of an image folder, image CSV or py: "
        "factory source (0: in the training process). In-memory tables need none.",
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
            raise ValueError(f"device {value!r} is not one of auto, cpu, cuda, cuda:N, mps")
        return value


class PipelineConfig(StrictModel):
    """Every setting of one pipeline run."""

    name: str = Field(default="stagetune", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    data: DataConfig = DataConfig()
    sample: SampleConfig = SampleConfig()
    model: ModelConfig = ModelConfig()
    space: SearchSpace = SearchSpace()
    search: SearchConfig = SearchConfig()
    training: TrainingConfig = TrainingConfig()
    augment: AugmentConfig = AugmentConfig()
    sanity: SanityConfig = SanityConfig()
    coarse: CoarseConfig = CoarseConfig()
    refine: RefineConfig = RefineConfig()
    final: FinalConfig = FinalConfig()
    tracking: TrackingConfig = TrackingConfig()
    execution: ExecutionConfig = ExecutionConfig()

    @model_validator(mode="after")
    def _check_model_params(self) -> Self:
        problem = model_params_problem(self.model.params, self.space, set(self.refine.narrowing.hard_limits.params))
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Self:
        self._check_task_fields()
        self._check_augment()
        if self.model.family == "cnn" and self.data.source_kind == "table" and self.data.source != "builtin:digits":
            raise ValueError(
                "model.family 'cnn' needs image-shaped data: builtin:digits, an image folder (DIR/), a CSV with "
                "data.image_column, or a py: factory whose samples are [C, H, W] tensors"
            )
        if self.refine.narrowing.top_k > self.coarse.n_trials:
            raise ValueError(
                f"refine.narrowing.top_k ({self.refine.narrowing.top_k}) exceeds coarse.n_trials "
                f"({self.coarse.n_trials}): lower top_k or run more coarse trials"
            )
        if self.refine.warm_start > min(self.refine.n_trials, self.coarse.n_trials):
            raise ValueError(
                f"refine.warm_start ({self.refine.warm_start}) exceeds refine.n_trials ({self.refine.n_trials}) "
                f"or coarse.n_trials ({self.coarse.n_trials}): enqueue fewer coarse trials"
            )
        return self

    def _check_augment(self) -> None:
        wanted = [
            name
            for name, on in (
                ("model.baseline.augment", self.model.baseline.augment),
                ("space.augment", any(choice is True for choice in self.space.augment.choices)),
            )
            if on
        ]
        if wanted and not self.augment.transforms:
            raise ValueError(
                f"augmentation is switched on ({', '.join(wanted)}) but the augment section sets no transform: set "
                "augment.flip_probability, augment.max_shift or augment.noise_std"
            )

    def _check_task_fields(self) -> None:
        # Only an explicit task is checked here; `auto` is resolved from the data (Stage 1 re-checks).
        task = self.data.task
        if task == "auto":
            if len(self.space.loss.choices) > 1 and self.search.objective == "val_loss":
                raise ValueError(
                    f"space.loss tunes the loss ({self.space.loss.choices}), so val_loss compares different "
                    "losses: judge trials by a metric instead (search.objective val_rmse, val_mae or val_r2)"
                )
            return
        if len(self.space.loss.choices) > 1 and self.search.objective == "val_loss":
            raise ValueError(
                f"space.loss tunes the loss ({self.space.loss.choices}), so val_loss compares different losses: "
                "judge trials by a metric instead (search.objective val_rmse, val_mae or val_r2)"
            )
        objectives = TASK_OBJECTIVES[task]
        if self.search.objective not in ("auto", *objectives):
            raise ValueError(
                f"search.objective {self.search.objective!r} does not fit a {task} task: use auto or one of "
                f"{list(objectives)}"
            )
        metrics = TASK_CHAMPION_METRICS[task]
        if self.final.champion_metric not in ("auto", *metrics):
            raise ValueError(
                f"final.champion_metric {self.final.champion_metric!r} does not fit a {task} task: "
                f"use auto or one of {list(metrics)}"
            )


def model_params_problem(baselines: Mapping[str, ParamValue], space: SearchSpace, limited: set[str]) -> str | None:
    """What is wrong between model.params (baselines) and space.params (ranges), in one sentence; None: nothing."""
    ranges = space.params
    only_baseline = sorted(set(baselines) - set(ranges))
    if only_baseline:
        name = only_baseline[0]
        return (
            f"model.params.{name} has no search range: add space.params.{name} (e.g. {{kind: categorical, "
            f"choices: [{baselines[name]!r}]}} to keep it fixed) or remove it"
        )
    only_range = sorted(set(ranges) - set(baselines))
    if only_range:
        name = only_range[0]
        return f"space.params.{name} has no baseline value: add model.params.{name} (used before the search)"
    unknown = sorted(limited - set(ranges))
    if unknown:
        return (
            f"refine.narrowing.hard_limits.params.{unknown[0]} limits a parameter space.params does not declare: "
            "remove it or fix its spelling"
        )
    for name, param in ranges.items():
        value = baselines[name]
        field = f"model.params.{name}"
        if isinstance(param, CategoricalParam):
            if not any(c == value and isinstance(c, bool) == isinstance(value, bool) for c in param.choices):
                return f"{field} = {value!r} is not among space.params.{name} choices {param.choices}: pick one of them"
            continue
        kind = "a number" if isinstance(param, FloatParam) else "an integer"
        if isinstance(value, bool | str) or (not isinstance(param, FloatParam) and not isinstance(value, int)):
            return f"{field} = {value!r} is not {kind}, but space.params.{name} is a {param.kind} range: write {kind}"
        if not param.low <= value <= param.high:
            return (
                f"{field} = {value!r} is outside space.params.{name} [{param.low}, {param.high}]: move the baseline "
                "into the range or widen it"
            )
    return None
