"""The one config object: every setting of a pipeline run, validated once at the edge."""

import re
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from schemas.base import StrictModel
from schemas.hyperparams import HyperParams, LossName, RebalanceStrategy
from schemas.search import NarrowingSettings
from schemas.search_space import SearchSpace
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
        "or a path / s3:// URI to a .csv or .parquet file",
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
        if re.search(r"://[^/@\s]*:[^/@\s]*@", value):
            # data.source is logged as an MLflow param; S3 keys come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.
            raise ValueError(
                "holds a password: give the URI without credentials and put them in the environment "
                "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for s3://)"
            )
        if not re.search(r"\.(csv|parquet|pq)(\.gz)?$", value, flags=re.IGNORECASE):
            raise ValueError(f"{value!r} is neither builtin:<name> nor a .csv/.parquet path or s3:// URI")
        return value

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
        if not self.source.startswith("builtin:") and not self.target:
            raise ValueError("data.target is required for a file source: name the label column")
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError("val_fraction + test_fraction must leave at least 20% of the rows for training")
        return self


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

    family: Literal["mlp", "cnn", "custom"] = "mlp"
    import_path: str | None = Field(
        default=None,
        description="custom family: 'package.module:factory', called as factory(hp, input_shape, num_classes)",
    )
    baseline: HyperParams = HyperParams()

    @model_validator(mode="after")
    def _check_custom(self) -> Self:
        if self.family == "custom":
            if not self.import_path or not re.fullmatch(r"[\w.]+:[\w.]+", self.import_path):
                raise ValueError("family 'custom' needs import_path as 'package.module:factory'")
        elif self.import_path is not None:
            raise ValueError(f"import_path is only used with family 'custom', not {self.family!r}: remove it")
        return self


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
        default=3.0,
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
    storage: str | None = Field(default=None, description="Optuna storage URL; None: SQLite at <workdir>/optuna.db.")
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
        description="Every running trial's process records a heartbeat this often in the study's storage.",
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


class RefineConfig(StrictModel):
    """Stage 4: narrowed, warm-started Bayesian search with pruning."""

    n_trials: int = Field(default=20, ge=0, le=100_000)
    epochs: int = Field(default=8, ge=1, le=10_000)
    sampler: Literal["tpe", "gp"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    narrowing: NarrowingSettings = NarrowingSettings()
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


class TrackingConfig(StrictModel):
    """Where MLflow records runs. None: a local SQLite store under execution.workdir."""

    uri: str | None = None
    experiment: str = Field(default="stagetune", min_length=1)
    registered_model: str | None = Field(default=None, description="Model Registry name; None: the config's name.")
    trial_plots: bool = Field(default=True, description="Log a learning-curve plot (SVG) for every trial.")
    report: bool = Field(default=True, description="Write the tuning report at the end of every run.")
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
    workdir: str = Field(default="stagetune-runs", min_length=1, description="Local stores and stage outputs.")
    task_runner: Literal["threads", "dask"] = Field(
        default="threads", description="Where trial tasks run: a thread pool, or a Dask cluster."
    )
    dask_address: str | None = Field(
        default=None, description="Dask scheduler address (tcp://host:8786); None: a LocalCluster."
    )
    dask_workers: int = Field(default=2, ge=1, le=1024, description="Workers of the LocalCluster.")
    gpus_per_trial: int = Field(default=0, ge=0, le=16, description="Dask resource annotation per trial task.")

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
    sanity: SanityConfig = SanityConfig()
    coarse: CoarseConfig = CoarseConfig()
    refine: RefineConfig = RefineConfig()
    final: FinalConfig = FinalConfig()
    tracking: TrackingConfig = TrackingConfig()
    execution: ExecutionConfig = ExecutionConfig()

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Self:
        self._check_task_fields()
        if self.model.family == "cnn" and self.data.source != "builtin:digits":
            raise ValueError("model.family 'cnn' needs image-shaped data: only builtin:digits (8x8) is supported")
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
