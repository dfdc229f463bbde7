"""Augmentation through the whole pipeline: a search that tunes `augment`, and a bad flip pair refused at Stage 1."""

import tempfile
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from flows.tune_pipeline import tune_pipeline
from stagetune.cli import app
from tests.conftest import tiny_config
from tests.test_bad_input import assert_rejected, base_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


def test_search_tunes_augment_and_logs_it_per_trial(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path,
        "space.augment.choices=[false, true]",
        "augment.max_shift=1",
        "augment.noise_std=0.1",
        "refine.n_trials=2",
        "refine.epochs=2",
        "final.max_epochs=2",
        "training.max_batches_per_epoch=4",
        "sanity.lr_range_test=false",
        "sanity.baseline_epochs=0",
    )
    result = tune_pipeline(config)
    client = MlflowClient(result.tracking_uri)
    runs = client.search_runs([result.mlflow_experiment_id], "tags.`stagetune.trial` != ''", max_results=100)
    values = {run.data.params["augment"] for run in runs}
    assert values == {"false", "true"}, values
    assert {r.data.tags["stagetune.state"] for r in runs} <= {"COMPLETE", "PRUNED"}
    assert result.best_hyperparams is not None
    final = client.get_run(result.mlflow_parent_run_id).data.params
    assert final["best.augment"] == str(result.best_hyperparams.augment).lower()


def test_unknown_flip_pair_is_refused_at_stage_one(tmp_path: Path) -> None:
    case = Path(tempfile.mkdtemp(dir=tmp_path))
    workdir = case / "work"
    raw = base_settings(workdir)
    raw["data"] = {"source": "builtin:diabetes"}
    raw["augment"] = {"noise_std": 0.1, "flip_pairs": [["left_eye", "right_eye"]]}
    (case / "config.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    result = CliRunner().invoke(app, ["run", str(case / "config.yaml")])
    assert_rejected(result, workdir, "augment.flip_pairs")
    assert "left_eye" in result.output
