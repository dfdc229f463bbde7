"""Regression end to end: a real-world-like CSV on the embedded defaults, and a multi-output run in process."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flows.tune_pipeline import tune_pipeline
from schemas.final import RegressionTestMetrics
from tests.conftest import TINY_OVERRIDES, subprocess_env, tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The embedded defaults run 40 trials (~2-4 minutes here). The test is about the data side set by
# data.source and data.target alone, so every data, sample and final-training setting stays at its
# default; only the search and the sanity checks shrink, with the tiny overrides other slow tests use.
SMALL_SEARCH = tuple(o for o in TINY_OVERRIDES if not o.startswith(("sample.", "data.", "final.")))


def house_prices(path: Path, n: int = 260, missing_targets: int = 13) -> Path:
    """Numeric and categorical features with gaps, a right-skewed price, and some rows without a price."""
    rng = np.random.default_rng(7)
    size = rng.gamma(4.0, 30.0, n)
    rooms = rng.integers(1, 7, n).astype(float)
    city = rng.choice(["north", "south", "centre"], n, p=[0.5, 0.3, 0.2])
    premium = pd.Series(city).map({"north": 0.0, "south": 0.3, "centre": 0.8}).to_numpy()
    price = np.exp(3.0 + 0.008 * size + 0.1 * rooms + premium + rng.normal(0, 0.15, n))  # log-normal: skewed
    table = pd.DataFrame({"size_m2": size, "rooms": rooms, "city": city, "price": price})
    table.loc[rng.choice(n, 20, replace=False), "size_m2"] = np.nan
    table.loc[rng.choice(n, 15, replace=False), "city"] = None
    table.loc[rng.choice(n, missing_targets, replace=False), "price"] = np.nan
    table.to_csv(path, index=False)
    return path


def test_csv_regression_on_the_embedded_defaults(tmp_path: Path, prefect_server: str) -> None:
    data = house_prices(tmp_path / "houses.csv")
    summary = tmp_path / "summary.json"
    command = [sys.executable, "-m", "stagetune", "run", "--set", f"data.source={data}", "--set"]
    command += ["data.target=price", "--summary", str(summary)]
    command += [arg for override in SMALL_SEARCH for arg in ("--set", override)]
    env = subprocess_env(tmp_path, PREFECT_API_URL=prefect_server)
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "task regression (target 'price' holds non-integer numbers)" in done.stdout + done.stderr
    result = json.loads(summary.read_text())
    assert result["status"] == "completed"
    sample = result["sample"]
    assert (sample["task"], sample["dropped_label_rows"]) == ("regression", 13)
    assert sample["n_train"] + sample["n_val"] + sample["n_test"] == 260 - 13
    metrics = result["test_metrics"]
    assert metrics["r2"] > 0.5, metrics  # the price follows the features closely
    assert metrics["rmse"] > 1.0  # in the price's own units, not standardised ones
    assert result["final"]["registry"]["metric_name"] == "rmse"
    store = f"sqlite:///{tmp_path / 'stagetune-runs' / 'mlflow.db'}"
    parent = MlflowClient(store).get_run(result["mlflow_parent_run_id"])
    assert parent.data.metrics["test/r2"] == pytest.approx(metrics["r2"])
    assert parent.data.metrics["test/rmse"] == pytest.approx(metrics["rmse"])


@pytest.mark.usefixtures("prefect_server")
def test_multi_output_regression_pipeline_on_cpu(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path,
        "data.source=builtin:synthetic_regression",
        "data.synthetic_regression.n_samples=400",
        "data.synthetic_regression.n_outputs=2",
        "search.objective=val_r2",
        "coarse.n_trials=3",
        "refine.n_trials=2",
        "refine.narrowing.top_k=2",
        "refine.warm_start=1",
        "tracking.report=true",
    )
    result = tune_pipeline(config)
    assert result.status == "completed", result.message
    assert result.final is not None
    test = result.final.test
    assert isinstance(test, RegressionTestMetrics)
    assert [o.name for o in test.per_output] == ["target0", "target1"]
    assert {"r2", "rmse", "mae", "target0.r2", "target1.rmse"} <= set(result.test_metrics)
    assert result.coarse is not None
    assert result.coarse.direction == "maximize"
    client = MlflowClient(result.tracking_uri)
    trial = next(t for t in result.coarse.trials if t.mlflow_run_id)
    metrics = client.get_run(trial.mlflow_run_id or "").data.metrics
    assert {"val/rmse", "val/mae", "val/r2", "train/rmse", "train/r2", "val/loss"} <= set(metrics)
    assert "val/acc" not in metrics
    parent_metrics = client.get_run(result.mlflow_parent_run_id or "").data.metrics
    assert parent_metrics["test/target1.r2"] == pytest.approx(test.per_output[1].r2)
    final_artifacts = {a.path for a in client.list_artifacts(result.final.mlflow_run_id or "", "plots")}
    assert {"plots/predicted_vs_actual.svg", "plots/residuals.svg"} <= final_artifacts
    reports = [a.path for a in client.list_artifacts(result.mlflow_parent_run_id or "", "report")]
    html = next(p for p in reports if p.endswith(".html"))
    text = Path(client.download_artifacts(result.mlflow_parent_run_id or "", html, str(tmp_path))).read_text()
    assert "predicted vs actual target1" in text
    assert "per output (test split, original units)" in text
