"""The flow end to end through Prefect and a real MLflow store, on tiny data on CPU."""

import json
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from flows.tune_pipeline import tune_pipeline
from stagetune.errors import InputError
from stagetune.stages.pipeline_run import resolve_tracking
from tests.conftest import tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


def _runs(tracking_uri: str, experiment_id: str) -> list[Run]:
    return MlflowClient(tracking_uri).search_runs([experiment_id], max_results=1000)


def _artifacts(client: MlflowClient, run_id: str) -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id):
        children = client.list_artifacts(run_id, item.path) if item.is_dir else []
        found.update(child.path for child in children) if children else found.add(item.path)
    return found


def test_digits_run_records_one_parent_with_nested_stage_runs(tmp_path: Path) -> None:
    result = tune_pipeline(
        tiny_config(
            tmp_path, "coarse.n_trials=2", "refine.n_trials=0", "refine.warm_start=0", "refine.narrowing.top_k=1"
        )
    )
    assert result.status == "completed"
    assert result.stages_completed == ["sample", "sanity", "coarse", "refine", "final"]
    assert result.sanity is not None
    assert result.sanity.passed
    assert result.sanity.baseline is not None
    assert len(result.sanity.baseline.history) == 2

    client = MlflowClient(result.tracking_uri)
    runs = _runs(result.tracking_uri, result.mlflow_experiment_id)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [p.info.run_id for p in parents] == [result.mlflow_parent_run_id]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["coarse.n_trials"] == "2"
    assert {"config/pipeline_config.json", "results/pipeline.json"} <= _artifacts(client, parent.info.run_id)

    stage_runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    children = {r.data.tags["stagetune.stage"]: r for r in stage_runs}
    assert set(children) == {"sample", "sanity", "coarse", "refine", "final"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children.values())
    assert all(r.info.status == "FINISHED" for r in children.values())

    sample_run = children["sample"]
    assert sample_run.data.metrics["data/train_rows_sampled"] == result.sample.n_train_sampled
    assert _artifacts(client, sample_run.info.run_id) == {"results/sample.json", "plots/class_distribution.svg"}
    local = client.download_artifacts(sample_run.info.run_id, "results/sample.json", str(tmp_path))
    assert json.loads(Path(local).read_text()) == result.sample.model_dump(mode="json")

    sanity_run = children["sanity"]
    for name in ("train/loss", "train/acc", "val/loss", "val/acc", "lr"):
        history = client.get_metric_history(sanity_run.info.run_id, name)
        assert [m.step for m in history] == [0, 1], name
    val_acc = [m.value for m in client.get_metric_history(sanity_run.info.run_id, "val/acc")]
    assert val_acc == [r.val_acc for r in result.sanity.baseline.history]
    assert sanity_run.data.tags["stagetune.sanity.passed"] == "true"
    assert {
        "results/sanity.json",
        "plots/learning_curve.svg",
        "plots/lr_range.svg",
        "plots/overfit_loss.svg",
    } == _artifacts(client, sanity_run.info.run_id)


def test_broken_model_stops_at_the_gate_with_a_diagnosis(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "model.family=custom", "model.import_path=tests.broken_models:input_ignoring")
    result = tune_pipeline(config)
    assert result.status == "sanity_failed"
    assert result.sanity is not None
    assert not result.sanity.passed
    assert [d.code for d in result.sanity.diagnoses] == ["flat_loss"]
    assert result.sanity.baseline is None
    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(result.mlflow_parent_run_id)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["stagetune.status"] == "sanity_failed"
    sanity_runs = [r for r in _runs(result.tracking_uri, result.mlflow_experiment_id) if r.info.run_name == "sanity"]
    assert sanity_runs[0].data.tags["stagetune.diagnosis"] == "flat_loss"


def test_bad_data_fails_before_anything_is_written_to_mlflow(tmp_path: Path) -> None:
    table = tmp_path / "rows.csv"
    table.write_text("a,b,label\n1,2,x\n3,4,y\n5,6,x\n")
    config = tiny_config(tmp_path, f"data.source={table}", "data.target=species")
    with pytest.raises(InputError) as caught:
        tune_pipeline(config)
    assert caught.value.field == "data.target"
    assert not Path(resolve_tracking(config).tracking_uri.removeprefix("sqlite:///")).exists()


def test_class_subset_and_cnn_family_run(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "model.family=cnn", "sample.classes=['3', '8']", "model.baseline.batch_size=32")
    result = tune_pipeline(config)
    assert result.sanity is not None
    assert result.sanity.passed, result.sanity.diagnoses
    assert result.sanity.num_classes == 2
    assert result.sample.sampled_class_names == ["3", "8"]
