"""The MLflow run tree against a real local store: nesting, tags, batched metrics, artifacts."""

import threading

import pytest
from mlflow.tracking import MlflowClient

from schemas.results import EpochRecord
from schemas.stages import Stage
from stagetune.flat_keys import flatten
from stagetune.tracking.run_tree import (
    STAGE_TAG,
    TRIAL_TAG,
    RunTree,
    end_run,
    ensure_experiment,
    epoch_metric_rows,
    log_metrics,
    log_params,
    log_record,
    stage_run,
    start_parent_run,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """One SQLite tracking store per module (creating one costs ~1 s of migrations)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    experiment_id = ensure_experiment(MlflowClient(uri), "t", (root / "artifacts").as_uri())
    assert ensure_experiment(MlflowClient(uri), "t", None) == experiment_id
    return uri, experiment_id


def _tree(store: tuple[str, str]) -> tuple[MlflowClient, RunTree]:
    uri, experiment_id = store
    return MlflowClient(uri), start_parent_run(uri, experiment_id, "demo", {"a.b": 1, "c": [1, 2]}, {"x": "y"})


def test_parent_stage_and_trial_runs_nest_even_from_other_threads(store: tuple[str, str]) -> None:
    client, tree = _tree(store)
    ids: dict[str, str] = {}

    def in_worker_thread() -> None:
        with stage_run(tree, "coarse") as stage_id:
            ids["stage"] = stage_id
            ids["trial"] = tree.start_trial(stage_id, "coarse", 3, "study-a")

    worker = threading.Thread(target=in_worker_thread)
    worker.start()
    worker.join()
    stage = client.get_run(ids["stage"])
    trial = client.get_run(ids["trial"])
    assert stage.data.tags["mlflow.parentRunId"] == tree.parent_run_id
    assert stage.data.tags[STAGE_TAG] == "coarse"
    assert stage.info.status == "FINISHED"
    assert trial.data.tags["mlflow.parentRunId"] == ids["stage"]
    assert trial.data.tags[TRIAL_TAG] == "3"
    parent = client.get_run(tree.parent_run_id)
    assert parent.data.params == {"a.b": "1", "c": "[1, 2]"}
    assert parent.data.tags["x"] == "y"


def test_stage_run_is_failed_when_the_stage_raises(store: tuple[str, str]) -> None:
    client, tree = _tree(store)
    try:
        with stage_run(tree, "sanity") as stage_id:
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert client.get_run(stage_id).info.status == "FAILED"


def test_epoch_metrics_are_logged_per_step(store: tuple[str, str]) -> None:
    client, tree = _tree(store)
    history = [
        EpochRecord(epoch=e, train_loss=1.0 / (e + 1), train_acc=0.5, val_loss=1.1, val_acc=0.4, lr=1e-3, seconds=0.1)
        for e in range(3)
    ]
    rows = epoch_metric_rows(history)
    assert len(rows) == 15
    log_metrics(client, tree.parent_run_id, rows)
    losses = client.get_metric_history(tree.parent_run_id, "train/loss")
    assert [(m.step, round(m.value, 4)) for m in losses] == [(0, 1.0), (1, 0.5), (2, 0.3333)]
    assert {"train/acc", "val/loss", "val/acc", "lr"} <= set(client.get_run(tree.parent_run_id).data.metrics)
    end_run(client, tree.parent_run_id)
    assert client.get_run(tree.parent_run_id).info.status == "FINISHED"


def test_more_than_a_hundred_params_are_batched(store: tuple[str, str]) -> None:
    client, tree = _tree(store)
    log_params(client, tree.parent_run_id, {f"p{i}": i for i in range(250)})
    assert len(client.get_run(tree.parent_run_id).data.params) == 252


def test_a_record_of_params_metrics_and_tags_is_one_call_within_mlflows_limits(
    store: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, tree = _tree(store)
    run_id = tree.start_stage(Stage.COARSE)
    calls: list[int] = []
    original = client.log_batch

    def counted(*args: object, **kwargs: object) -> None:
        calls.append(1)
        original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(client, "log_batch", counted)

    log_record(client, run_id, {"best.width": 64}, [("trials/complete", 4.0, 0)], {"stagetune.best_trial": "3"})
    log_record(client, run_id, {f"p{i}": i for i in range(150)}, [("best/objective", 0.5, 0)], {"t": "v"})

    assert len(calls) == 1 + 4  # the second: 150 params in 2 calls, then metrics, then tags
    data = client.get_run(run_id).data
    assert data.params["best.width"] == "64"
    assert data.params["p149"] == "149"
    assert data.metrics == {"trials/complete": 4.0, "best/objective": 0.5}
    assert data.tags["stagetune.best_trial"] == "3"
    assert data.tags["t"] == "v"


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": {}, "f": [1]}) == {"a.b": 1, "a.c.d": None, "e": {}, "f": [1]}
