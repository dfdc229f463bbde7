"""The champion of an image folder as an MLflow model: loaded in a fresh process, it predicts image paths,
and base64 image bytes, exactly as the final stage predicted the test split from training's decoded batches."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flows.tune_pipeline import tune_pipeline
from schemas.pipeline import PipelineResult
from stagetune.data.source import LazyRows
from stagetune.data.stage import load_stage_arrays
from stagetune.examples_data import make_shapes
from stagetune.serving.preprocessing import serving_paths
from stagetune.serving.pyfunc_model import StagetuneModel
from tests.conftest import subprocess_env, tiny_config
from tests.test_champion_model import assert_same_predictions, stage_predictions

TINY_CNN = (
    "model.family=cnn",
    "execution.num_workers=0",
    "sanity.enabled=false",
    "coarse.n_trials=2",
    "coarse.epochs=1",
    "refine.n_trials=1",
    "refine.epochs=1",
    "refine.warm_start=1",
    "final.max_epochs=1",
    "space.channels.choices=[4]",
    "model.baseline.channels=4",
)

PREDICT = """
import base64, json, sys, warnings, mlflow, pandas as pd
from pathlib import Path
from mlflow.models import validate_serving_input
model = mlflow.pyfunc.load_model(sys.argv[1])
paths = pd.read_parquet(sys.argv[2])
encoded = pd.DataFrame({"image_base64": [base64.b64encode(Path(p).read_bytes()).decode() for p in paths["image"]]})
model.predict(paths).to_json(sys.argv[3] + ".paths", orient="split")
model.predict(encoded).to_json(sys.argv[3] + ".base64", orient="split")
for given, rows in (("paths", paths), ("base64", encoded)):
    model.predict(rows, params={"output": "proba"}).to_json(f"{sys.argv[3]}.{given}.proba", orient="split")
# An HTTP request's body, parsed and checked against the signature as `mlflow models serve` does it.
body = json.dumps({"dataframe_split": json.loads(encoded.to_json(orient="split", index=False))})
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # deprecated in favour of a prediction in a fresh environment
    validate_serving_input(sys.argv[1], body).to_json(sys.argv[3] + ".http", orient="split")
"""


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_an_image_champion_predicts_paths_and_base64_in_a_fresh_process(tmp_path: Path) -> None:
    make_shapes(tmp_path / "shapes", per_class=20, size=8, seed=7)
    config = tiny_config(
        tmp_path, f"data.source={tmp_path / 'shapes'}/", "tracking.registered_model=m-images", *TINY_CNN
    )
    result = tune_pipeline(config)
    assert result.status == "completed", result.message
    assert result.final is not None
    assert result.final.registry is not None
    rows, expected = stage_predictions(result)  # absolute paths of the test images; the stage's predictions
    assert len(rows) == len(expected) == result.final.test.n_samples
    version = MlflowClient(result.tracking_uri).get_model_version("m-images", str(result.final.registry.version))
    assert version.source.startswith("models:/")  # a logged pyfunc model, not the checkpoint folder

    rows.to_parquet(tmp_path / "in.parquet")
    out = tmp_path / "out.json"
    env = subprocess_env(tmp_path, MLFLOW_TRACKING_URI=result.tracking_uri)
    args = [sys.executable, "-c", PREDICT, "models:/m-images@champion", str(tmp_path / "in.parquet"), str(out)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for given in ("paths", "base64", "http"):
        predicted = pd.read_json(f"{out}.{given}", orient="split", dtype=False)
        assert_same_predictions(predicted, expected, "classification")
    assert set(expected["prediction"]) <= {"circle", "cross", "square", "triangle"}
    expected_proba = probabilities_from_training_batch(result)
    for given in ("paths", "base64"):
        proba = pd.read_json(f"{out}.{given}.proba", orient="split")
        assert list(proba.columns) == ["circle", "cross", "square", "triangle"]
        np.testing.assert_allclose(proba.to_numpy(), expected_proba.to_numpy(), rtol=1e-5, atol=1e-7)


def probabilities_from_training_batch(result: PipelineResult) -> pd.DataFrame:
    """The final run's checkpoint on the test images as training's loaders decode them (not via the pyfunc)."""
    assert result.final is not None
    assert result.final.mlflow_run_id is not None
    assert result.sample is not None
    client = MlflowClient(result.tracking_uri)
    checkpoint = Path(client.download_artifacts(result.final.mlflow_run_id, "checkpoint/checkpoint.pt"))
    model = StagetuneModel()
    model.load_files(checkpoint, serving_paths(result.sample.data_path)[0])
    x_test = load_stage_arrays(result.sample).X_test
    assert isinstance(x_test, LazyRows)
    return model.decode(model.raw_outputs(x_test.materialise()), "proba")
