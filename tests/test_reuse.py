"""Retuning that builds on the last run: known points enqueued as the first coarse trials, once."""

from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from schemas.config import ModelConfig
from schemas.hyperparams import HyperParams
from schemas.search import ReusedTrial, TrialRecord
from schemas.search_space import SearchSpace
from stagetune.search.space import optuna_params, suggest_hyperparams
from stagetune.search.study import open_storage, storage_url
from stagetune.stages.reuse import (
    REUSE_ATTR,
    TRIAL_REUSE_ATTR,
    enqueue_reused,
    hyperparams_from_logged,
    score_reused,
)
from stagetune.tracking.run_tree import log_params
from tests.conftest import tiny_config

SPACE = SearchSpace()
BASE = HyperParams()


def _point(label: str, **fields: object) -> ReusedTrial:
    hp = HyperParams.model_validate({**BASE.model_dump(), **fields})
    return ReusedTrial(source="champion", label=label, source_run_id="r" + label, hyperparams=hp)


def _study() -> optuna.Study:
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))


def test_points_inside_the_space_are_enqueued_first_and_come_back_unchanged() -> None:
    study = _study()
    inside = _point("a", optimizer="adam", learning_rate=1e-3, width=64, dropout=0.1)
    outside = _point("b", optimizer="adam", learning_rate=5.0)  # far above the default range
    plan = enqueue_reused(study, SPACE, ModelConfig(), 10, [inside, outside])
    assert [item.number for item in plan] == [0, None]
    assert plan[1].skipped is not None
    assert "learning_rate" in plan[1].skipped
    trial = study.ask()
    assert trial.number == 0
    asked = suggest_hyperparams(trial, SPACE, ModelConfig())
    assert optuna_params(asked, SPACE, ModelConfig()) == optuna_params(inside.hyperparams, SPACE, ModelConfig())


def test_duplicates_and_points_beyond_the_budget_are_not_enqueued() -> None:
    study = _study()
    a, b, c = _point("a", width=64), _point("b", width=64), _point("c", width=32)
    plan = enqueue_reused(study, SPACE, ModelConfig(), 1, [a, b, c])
    assert [item.number for item in plan] == [0, None, None]
    assert plan[1].skipped == "same point as an earlier one"
    assert plan[2].skipped is not None
    assert "budget" in plan[2].skipped
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 1


def test_a_resumed_study_keeps_its_plan_and_enqueues_nothing_twice() -> None:
    study = _study()
    first = enqueue_reused(study, SPACE, ModelConfig(), 10, [_point("a", width=64)])
    again = enqueue_reused(study, SPACE, ModelConfig(), 10, [_point("other", width=32), _point("a", width=64)])
    assert again == first
    assert len(study.trials) == 1
    assert study.user_attrs[REUSE_ATTR][0]["label"] == "a"


def test_reused_points_are_scored_by_their_coarse_rank() -> None:
    plan = [_point("a").model_copy(update={"number": 1}), _point("b").model_copy(update={"number": None})]
    records = [
        TrialRecord(number=0, state="COMPLETE", value=0.5, hyperparams=BASE),
        TrialRecord(number=1, state="COMPLETE", value=0.2, hyperparams=BASE),
        TrialRecord(number=2, state="FAIL", hyperparams=BASE),
    ]
    scored = score_reused(plan, records, "minimize")
    assert (scored[0].value, scored[0].rank) == (0.2, 1)
    assert (scored[1].value, scored[1].rank) == (None, None)
    assert score_reused(plan, records, "maximize")[0].rank == 2


def test_hyperparams_round_trip_through_logged_params(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("t")).info.run_id
    hp = HyperParams(optimizer="sgd", learning_rate=0.0123, momentum=0.8, batch_norm=True, activation="gelu")
    log_params(client, run_id, {**hp.model_dump(mode="json"), **{f"best.{k}": v for k, v in hp.model_dump().items()}})
    params = client.get_run(run_id).data.params
    assert hyperparams_from_logged(params, ModelConfig()) == hp
    assert hyperparams_from_logged(params, ModelConfig(), "best.") == hp
    assert hyperparams_from_logged({k: v for k, v in params.items() if k != "width"}, ModelConfig()) is None


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_retune_starts_from_the_champion_and_the_last_run(tmp_path: Path) -> None:
    from flows.tune_pipeline import tune_pipeline
    from stagetune.report.build import build_report

    overrides = (
        "sanity.enabled=false",
        "coarse.n_trials=3",
        "coarse.epochs=1",
        "refine.epochs=1",
        "sample.max_rows=200",
        "coarse.reuse_previous=1",
        "refine.n_trials=1",
        "refine.warm_start=1",
        "refine.narrowing.top_k=1",
        "refine.narrowing.min_completed=1",
        "final.max_epochs=1",
        "training.max_batches_per_epoch=3",
    )
    config = tiny_config(tmp_path, *overrides)
    first = tune_pipeline(config)
    assert first.coarse is not None
    assert first.coarse.reused == []
    assert first.registered_model is not None
    assert first.registered_model.alias == "champion"
    second = tune_pipeline(config)
    coarse = second.coarse
    assert coarse is not None
    assert first.final is not None
    champion, previous = coarse.reused
    assert (champion.source, champion.model_version, champion.number) == ("champion", 1, 0)
    assert champion.hyperparams == first.final.hyperparams
    assert coarse.trials[0].hyperparams == first.final.hyperparams  # the champion's point, run again
    assert champion.rank is not None
    assert champion.value == coarse.trials[0].value
    assert previous.source == "previous_run"
    assert previous.source_run_id == first.mlflow_parent_run_id
    # The champion is also the last run's best trial: the same point is not enqueued twice.
    assert previous.number is None
    assert previous.skipped == "same point as an earlier one"
    assert coarse.enqueued == [0]
    assert sorted(t.number for t in coarse.trials) == [0, 1, 2]  # the enqueued trial counts toward the budget
    # In the Optuna study: trial 0 was enqueued with the champion's point, marked with where it came from.
    study = optuna.load_study(study_name=coarse.study_name, storage=open_storage(storage_url(config)))
    assert study.trials[0].user_attrs[TRIAL_REUSE_ATTR] == champion.label
    assert study.trials[0].params == optuna_params(champion.hyperparams, coarse.space, ModelConfig())
    client = MlflowClient(second.tracking_uri)
    assert "v1 (champion): trial 0" in client.get_run(coarse.mlflow_run_id).data.tags["stagetune.reused"]
    # System metrics on every trial run and on the final run (see tests/test_system_metrics.py).
    trial = client.get_run(coarse.trials[1].mlflow_run_id or "")
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(trial.data.metrics)
    assert second.final is not None
    final = client.get_run(second.final.mlflow_run_id or "")
    assert "system/cpu_utilization_percentage" in final.data.metrics
    report = build_report(second, client)
    coarse_html = next(section.html for section in report.sections if section.id == "coarse")
    assert "reused from earlier runs" in coarse_html
    assert "v1 (champion)" in coarse_html
