"""The pipeline's own results: each search stage's and the whole run's (what --summary writes)."""

from typing import Literal

from pydantic import ConfigDict, Field

from schemas.base import StrictModel
from schemas.final import FinalResult, StageDiagnosisSummary
from schemas.hyperparams import HyperParams
from schemas.results import SampleResult, SanityResult
from schemas.search import NarrowingReport, ReusedTrial, TrialRecord
from schemas.search_space import SearchSpace
from schemas.stages import SearchStage, Stage


class SearchStageResult(StrictModel):
    """Stage 3 or 4 output: the study, every trial, the best one, and what the curves say."""

    model_config = ConfigDict(**StrictModel.model_config, ser_json_inf_nan="strings")

    stage: SearchStage
    study_name: str
    sampler: str
    pruner: str
    objective: str
    direction: Literal["minimize", "maximize"]
    epochs: int
    n_train_rows: int
    space: SearchSpace
    enqueued: list[int] = Field(default_factory=list, description="Trial numbers seeded with known points.")
    reused: list[ReusedTrial] = Field(
        default_factory=list, description="Coarse only: the champion's and the previous run's points, and how they did."
    )
    counts: dict[str, int] = Field(description="Trials per final state (COMPLETE, PRUNED, FAIL).")
    best: TrialRecord | None
    trials: list[TrialRecord]
    diagnosis: StageDiagnosisSummary
    mlflow_run_id: str
    seconds: float = Field(ge=0)


class SharedStudyPlan(StrictModel):
    """What a search stage publishes on its Optuna study, so `stagetune worker` processes can join it."""

    stage: SearchStage
    n_trials: int = Field(ge=0)
    epochs: int = Field(ge=1)
    space: SearchSpace
    train_fraction: float = Field(gt=0, le=1)
    full_data: bool
    sampler: str
    pruner: str
    objective: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    stage_run_id: str
    sample_fingerprint: str
    sampled_fingerprint: str
    # The stage sampler's seed and start-up trials: a joining worker builds the same sampler (its draws
    # are seeded per trial number, so it never repeats the pipeline's). None: published by an older version.
    sampler_seed: int | None = None
    n_startup_trials: int | None = Field(default=None, ge=1)
    # search.sync_window of the stage: a worker decides and waits for trials in the same windows. None:
    # published by an older version (then 1: every trial waits for all earlier ones).
    sync_window: int | None = Field(default=None, ge=1)


class RegisteredModel(StrictModel):
    """Where the final model went in the Model Registry."""

    name: str
    version: int
    alias: Literal["champion", "challenger"]
    decision: str


class PipelineResult(StrictModel):
    """What `stagetune run --summary PATH` writes: every stage's result and the headline figures."""

    model_config = ConfigDict(**StrictModel.model_config, ser_json_inf_nan="strings")

    name: str
    status: Literal["completed", "sanity_failed", "search_failed"]
    message: str
    mlflow_parent_run_id: str
    mlflow_experiment_id: str
    tracking_uri: str
    stages_completed: list[Stage]
    best_hyperparams: HyperParams | None = None
    test_metrics: dict[str, float] = Field(default_factory=dict, description="accuracy, balanced_accuracy, ...")
    registered_model: RegisteredModel | None = None
    narrowed_space: SearchSpace | None = None
    narrowing: NarrowingReport | None = None
    sample: SampleResult
    sanity: SanityResult | None = None
    coarse: SearchStageResult | None = None
    refine: SearchStageResult | None = None
    final: FinalResult | None = None
