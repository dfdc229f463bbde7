"""All five stages on tiny data: the MLflow tree, warm start, narrowing, NaN trials, determinism, champion."""

import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.tune_pipeline import tune_pipeline
from schemas.pipeline import PipelineResult
from schemas.search_space import CategoricalParam, FloatParam, IntParam
from tests.conftest import tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> PipelineResult:
    """One tiny digits run shared by the read-only checks below."""
    return tune_pipeline(tiny_config(tmp_path_factory.mktemp("digits")))


def test_mlflow_tree_is_parent_stages_and_one_run_per_trial(digits_run: PipelineResult) -> None:
    client = MlflowClient(digits_run.tracking_uri)
    runs = client.search_runs([digits_run.mlflow_experiment_id], max_results=1000)
    by_parent: dict[str, list] = {}
    for run in runs:
        by_parent.setdefault(run.data.tags.get("mlflow.parentRunId", ""), []).append(run)
    assert [r.info.run_id for r in by_parent[""]] == [digits_run.mlflow_parent_run_id]
    stages = {r.data.tags["stagetune.stage"]: r for r in by_parent[digits_run.mlflow_parent_run_id]}
    assert sorted(stages) == ["coarse", "final", "refine", "sample", "sanity"]
    assert len(runs) == 1 + 5 + 4 + 4  # parent, stages, coarse trials, refinement trials
    for stage in ("coarse", "refine"):
        trials = by_parent[stages[stage].info.run_id]
        assert sorted(int(t.data.tags["stagetune.trial"]) for t in trials) == [0, 1, 2, 3]
        for trial in trials:
            assert trial.data.tags["stagetune.stage"] == stage
            assert trial.data.tags["stagetune.state"] in {"COMPLETE", "PRUNED", "FAIL"}
            assert trial.data.tags["stagetune.diagnosis"]
            assert {"train/loss", "train/acc", "val/loss", "val/acc", "lr"} <= set(trial.data.metrics)
            assert "learning_rate" in trial.data.params
            # A pruned trial is not a failed MLflow run.
            expected = "FAILED" if trial.data.tags["stagetune.state"] == "FAIL" else "FINISHED"
            assert trial.info.status == expected
            curves = {a.path for a in client.list_artifacts(trial.info.run_id, "plots")}
            assert curves == {"plots/learning_curve.svg"}
        artifacts = {a.path for a in client.list_artifacts(stages[stage].info.run_id, "plots")}
        assert {"plots/history.svg", "plots/parallel_coordinates.svg"} <= artifacts
    final_artifacts = {a.path for a in client.list_artifacts(stages["final"].info.run_id, "plots")}
    assert final_artifacts == {"plots/confusion_matrix.svg", "plots/learning_curve.svg"}
    assert {"test/accuracy", "test/balanced_accuracy", "test/macro_f1"} <= set(stages["final"].data.metrics)
    parent = client.get_run(digits_run.mlflow_parent_run_id)
    assert parent.data.metrics["test/accuracy"] == pytest.approx(digits_run.test_metrics["accuracy"])
    assert "best.learning_rate" in parent.data.params


def test_refinement_starts_with_the_enqueued_coarse_bests(digits_run: PipelineResult) -> None:
    coarse, refine = digits_run.coarse, digits_run.refine
    assert coarse is not None
    assert refine is not None
    ranked = sorted(
        (t for t in coarse.trials if t.state == "COMPLETE"), key=lambda t: (t.value, t.number)
    )  # val_loss: lower is better
    assert refine.enqueued == [0, 1]
    for seed, trial in zip(ranked[:2], refine.trials[:2], strict=True):
        assert trial.hyperparams == seed.hyperparams


def test_narrowed_ranges_are_explained_and_inside_hard_limits(digits_run: PipelineResult) -> None:
    report, space = digits_run.narrowing, digits_run.narrowed_space
    assert report is not None
    assert space is not None
    assert not report.fallback
    assert len(report.top_trials) == 2
    assert {c.name for c in report.changes} >= {"dropout", "weight_decay", "width", "depth", "batch_size"}
    assert all(c.reason for c in report.changes)
    limits = tiny_config(Path(".")).refine.narrowing.hard_limits
    for name in ("dropout", "weight_decay", "width", "depth"):
        param = getattr(space, name)
        limit = getattr(limits, name)
        if isinstance(param, FloatParam | IntParam):
            assert limit.low <= param.low <= param.high <= limit.high, name
    for rate in space.learning_rate.values():
        assert limits.learning_rate.low <= rate.low <= rate.high <= limits.learning_rate.high
    assert isinstance(space.optimizer, CategoricalParam)
    assert digits_run.refine is not None
    assert digits_run.refine.space == space


def test_summary_holds_best_params_metrics_and_registry(digits_run: PipelineResult) -> None:
    assert digits_run.status == "completed"
    assert digits_run.best_hyperparams is not None
    assert digits_run.final is not None
    assert digits_run.final.hyperparams == digits_run.best_hyperparams
    assert set(digits_run.test_metrics) == {"accuracy", "balanced_accuracy", "macro_f1", "loss"}
    assert digits_run.test_metrics["accuracy"] > 0.5  # 10 classes: far above chance even when tiny
    assert digits_run.registered_model is not None
    assert digits_run.registered_model.version == 1
    assert digits_run.registered_model.alias == "champion"
    client = MlflowClient(digits_run.tracking_uri)
    assert int(client.get_model_version_by_alias("stagetune", "champion").version) == 1


def test_diverging_trials_fail_with_a_reason_and_the_study_goes_on(tmp_path: Path) -> None:
    explode = [
        "space.optimizer.choices=[sgd, adamw]",
        "space.learning_rate.sgd={kind: float, low: 5.0, high: 10.0, scale: log}",
        "space.momentum={kind: float, low: 0.99, high: 0.99}",
        # Batches of 32: enough SGD steps in 2 epochs for such rates to diverge, whatever else is drawn
        # (with batches of 256, 4 steps, a draw may survive).
        "space.batch_size.choices=[32]",
        "training.grad_clip_norm=null",
        "coarse.n_trials=6",
        "refine.narrowing.min_completed=1",
        "refine.narrowing.top_k=1",
        "refine.warm_start=1",
    ]
    result = tune_pipeline(tiny_config(tmp_path, *explode))
    assert result.coarse is not None
    failed = [t for t in result.coarse.trials if t.state == "FAIL"]
    assert failed, [t.hyperparams.optimizer for t in result.coarse.trials]
    assert all(t.hyperparams.optimizer == "sgd" for t in failed)
    assert all("became" in (t.fail_reason or "") for t in failed)
    assert result.status == "completed"
    client = MlflowClient(result.tracking_uri)
    run = client.get_run(failed[0].mlflow_run_id or "")
    assert run.info.status == "FAILED"
    assert run.data.tags["stagetune.state"] == "FAIL"
    assert "became" in run.data.tags["stagetune.reason"]


def test_same_seed_and_concurrency_one_give_the_same_trials(tmp_path: Path) -> None:
    first = tune_pipeline(tiny_config(tmp_path / "a", "refine.n_trials=2"))
    second = tune_pipeline(tiny_config(tmp_path / "b", "refine.n_trials=2"))
    for stage in ("coarse", "refine"):
        a, b = getattr(first, stage), getattr(second, stage)
        assert [t.params for t in a.trials] == [t.params for t in b.trials]
        assert [t.value for t in a.trials] == pytest.approx([t.value for t in b.trials])


def test_concurrent_trials_keep_the_budget(tmp_path: Path) -> None:
    result = tune_pipeline(tiny_config(tmp_path, "execution.concurrency=3", "coarse.n_trials=5"))
    assert result.coarse is not None
    assert sorted(t.number for t in result.coarse.trials) == [0, 1, 2, 3, 4]
    assert sum(result.coarse.counts.values()) == 5


def test_champion_moves_only_when_beaten(tmp_path: Path) -> None:
    first = tune_pipeline(tiny_config(tmp_path, "name=champ"))
    second = tune_pipeline(tiny_config(tmp_path, "name=champ", "seed=1"))
    assert first.registered_model is not None
    assert second.registered_model is not None
    assert second.final is not None
    assert first.final is not None
    # Different seed -> different split -> different test fingerprint: the champion is re-scored on the
    # new test split first, so like is compared with like (its tiny model stays ahead of this one).
    assert second.final.registry is not None
    assert "re-scored on today's test split" in second.final.registry.reason
    client = MlflowClient(first.tracking_uri)
    before = int(client.get_model_version_by_alias("champ", "champion").version)
    assert before == (second.registered_model.version if second.final.registry.decision == "promoted" else 1)
    third = tune_pipeline(tiny_config(tmp_path, "name=champ", "final.max_epochs=1"))
    assert third.final is not None
    assert third.final.registry is not None
    assert third.registered_model is not None
    champion = int(client.get_model_version_by_alias("champ", "champion").version)
    promoted = third.final.registry.decision == "promoted"
    assert champion == (third.registered_model.version if promoted else before)
    if before == first.registered_model.version:  # same data as the first run: its own test score decides
        assert promoted == (third.test_metrics["accuracy"] > first.test_metrics["accuracy"])
    assert math.isfinite(third.test_metrics["accuracy"])
