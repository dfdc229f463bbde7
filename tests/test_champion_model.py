"""The champion as an MLflow model: loaded in a fresh process and served over HTTP, it predicts raw rows
exactly as the final stage predicted the test split (labels for a classifier, original units for a regressor)."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flows.tune_pipeline import tune_pipeline
from schemas.pipeline import PipelineResult
from stagetune.data.stage import load_stage_arrays
from stagetune.registry import register_and_promote
from stagetune.registry.champion import rescore_tag
from stagetune.serving.final_model import TEST_PREDICTIONS_ARTIFACT, rescore_champion
from stagetune.serving.log_model import tracking_uri_set
from stagetune.serving.preprocessing import serving_paths
from stagetune.task import full_task_for
from tests.conftest import subprocess_env, tiny_config
from tests.test_regression_pipeline import house_prices

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

FAST = (
    "sanity.enabled=false",
    "coarse.n_trials=2",
    "refine.n_trials=2",
    "refine.narrowing.top_k=2",
    "final.max_epochs=3",
)


def customers(path: Path, n: int = 300) -> Path:
    """A churn-like table: text and integer categories, numbers with gaps, text labels."""
    rng = np.random.default_rng(11)
    plan = rng.choice(["basic", "plus", "pro"], n).astype(object)
    tenure = rng.gamma(2.0, 12.0, n)
    calls = rng.integers(0, 9, n)
    churn = np.where(tenure + 8 * (plan == "pro") - 3 * calls + rng.normal(0, 1, n) > 15, "stays", "leaves")
    table = pd.DataFrame({"plan": plan, "tenure": tenure, "calls": calls, "region": rng.choice(["n", "s"], n)})
    table["churn"] = churn
    table.loc[::7, "tenure"] = np.nan
    table.loc[::11, "plan"] = None
    table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[PipelineResult, Path]]:
    """One tiny pipeline run per task (module-scoped: every test below reads them)."""
    out = {}
    for task, make, target in (("classification", customers, "churn"), ("regression", house_prices, "price")):
        workdir = tmp_path_factory.mktemp(task)
        data = make(workdir / f"{task}.csv")
        overrides = [f"data.source={data}", f"data.target={target}", f"tracking.registered_model=m-{task}", *FAST]
        if task == "regression":
            overrides.append("search.objective=val_r2")
        out[task] = (tune_pipeline(tiny_config(workdir, *overrides)), workdir)
    return out


def stage_predictions(result: PipelineResult) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The raw test rows Stage 1 kept, and the final stage's decoded predictions for them."""
    assert result.final is not None
    assert result.final.mlflow_run_id is not None
    assert result.sample is not None
    client = MlflowClient(result.tracking_uri)
    stored = client.download_artifacts(result.final.mlflow_run_id, TEST_PREDICTIONS_ARTIFACT)
    split = json.loads(Path(stored).read_text())
    expected = pd.DataFrame(split["data"], columns=split["columns"])
    return pd.read_parquet(serving_paths(result.sample.data_path)[1]), expected


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_champion_loads_in_a_fresh_process_and_predicts_raw_rows(
    runs: dict[str, tuple[PipelineResult, Path]], task: str, tmp_path: Path
) -> None:
    result, _ = runs[task]
    rows, expected = stage_predictions(result)
    assert rows.isna().any().any()  # raw rows, gaps included
    rows.drop(columns=[c for c in rows.columns if c == "region"]).assign(extra="x").to_parquet(tmp_path / "in.parquet")
    code = (
        "import sys, mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "rows = pd.read_parquet(sys.argv[2])\n"
        "model.predict(rows).to_json(sys.argv[3], orient='split')\n"
        "if sys.argv[4] == 'classification':\n"
        "    model.predict(rows, params={'output': 'proba'}).to_json(sys.argv[3] + '.proba', orient='split')\n"
    )
    name = f"models:/m-{task}@champion"
    env = subprocess_env(tmp_path, MLFLOW_TRACKING_URI=result.tracking_uri)
    args = [sys.executable, "-c", code, name, str(tmp_path / "in.parquet"), str(tmp_path / "out.json"), task]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)
    if task == "classification":
        assert done.returncode != 0
        assert "'region'" in done.stderr
        rows.to_parquet(tmp_path / "in.parquet")
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    predicted = pd.read_json(tmp_path / "out.json", orient="split", dtype=False)
    assert_same_predictions(predicted, expected, task)
    if task == "classification":
        assert set(expected["prediction"]) <= {"stays", "leaves"}
        proba = pd.read_json(str(tmp_path / "out.json") + ".proba", orient="split")
        assert sorted(proba.columns) == ["leaves", "stays"]
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
        assert (proba.idxmax(axis=1) == expected["prediction"]).all()
    else:
        assert expected["price"].mean() > 10  # original units, not standardised ones


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_mlflow_models_serve_answers_with_the_same_predictions(
    runs: dict[str, tuple[PipelineResult, Path]], task: str, tmp_path: Path
) -> None:
    result, _ = runs[task]
    rows, expected = stage_predictions(result)
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/m-{task}@champion"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    env = subprocess_env(tmp_path, MLFLOW_TRACKING_URI=result.tracking_uri)
    with served(command, env, tmp_path / "serve.log") as base:
        body = json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))})
        request = urllib.request.Request(
            f"{base}/invocations", data=body.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())["predictions"]
    assert_same_predictions(pd.DataFrame(answer), expected, task)


def test_the_version_links_the_logged_model_and_carries_its_tags(runs: dict[str, tuple[PipelineResult, Path]]) -> None:
    result, _ = runs["classification"]
    assert result.final is not None
    assert result.final.registry is not None
    client = MlflowClient(result.tracking_uri)
    version = client.get_model_version("m-classification", str(result.final.registry.version))
    model_id = version.source.removeprefix("models:/")  # MLflow 3: the logged model's URI
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == result.final.mlflow_run_id
    assert {"name": "m-classification", "version": int(version.version)} in json.loads(
        logged.tags["mlflow.modelVersions"]
    )
    tags = version.tags
    assert tags["stagetune.parent_run"] == result.mlflow_parent_run_id
    assert float(tags["stagetune.test.accuracy"]) == pytest.approx(result.final.test.summary_metrics()["accuracy"])
    assert len(tags["stagetune.config_hash"]) == 16
    assert tags["stagetune.data_fingerprint"]


def assert_same_predictions(predicted: pd.DataFrame, expected: pd.DataFrame, task: str) -> None:
    assert list(predicted.columns) == list(expected.columns)
    if task == "classification":
        assert predicted["prediction"].astype(str).tolist() == expected["prediction"].astype(str).tolist()
    else:
        np.testing.assert_allclose(predicted.to_numpy(float), expected.to_numpy(float), rtol=1e-5)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def served(command: list[str], env: dict[str, str], log: Path) -> Iterator[str]:
    """`mlflow models serve` in its own process group; yields its base URL once /ping answers.

    The venv's bin folder leads PATH, as in an activated venv: MLflow starts uvicorn by name.
    """
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    base = f"http://127.0.0.1:{command[command.index('--port') + 1]}"
    with log.open("w") as stream:
        process = subprocess.Popen(command, env=env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while not _answers(f"{base}/ping"):
                assert process.poll() is None, f"mlflow models serve exited: {log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"no answer on /ping: {log.read_text()[-3000:]}"
                time.sleep(0.5)
            yield base
        finally:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def test_on_new_data_the_champion_is_rescored_before_the_comparison(
    runs: dict[str, tuple[PipelineResult, Path]],
) -> None:
    """A retune on other test data: the champion's own pyfunc scores today's raw test rows first.

    Here "today's" rows are the same rows under another fingerprint, so the re-score must reproduce
    the champion's own test accuracy exactly; a version beating it is then promoted, saying why.
    """
    result, _ = runs["classification"]
    assert result.final is not None
    assert result.final.registry is not None
    assert result.sample is not None
    client = MlflowClient(result.tracking_uri)
    champion = client.get_model_version_by_alias("m-classification", "champion")
    accuracy = result.final.test.summary_metrics()["accuracy"]
    task = full_task_for(result.sample, "auto")
    y_test = load_stage_arrays(result.sample).y_test
    note = rescore_champion(
        client, result.tracking_uri, "m-classification", fingerprint="new-data-fp", metric_name="accuracy",
        sample=result.sample, y_test=y_test, task=task,
    )  # fmt: skip
    assert note is not None
    assert f"champion v{champion.version} re-scored on today's test split" in note
    rescored = client.get_model_version("m-classification", champion.version).tags[rescore_tag("new-data-fp")]
    assert rescored == f"accuracy={accuracy!r}"
    with tracking_uri_set(result.tracking_uri):
        better = register_and_promote(
            client, run_id=str(champion.run_id), model_name="m-classification", model_source=str(champion.source),
            metric_name="accuracy", metric_value=min(accuracy + 0.01, 1.0), data_fingerprint="new-data-fp",
        )  # fmt: skip
    if accuracy < 1.0:
        assert better.decision == "promoted"
    assert "(re-scored on this test data)" in better.reason
