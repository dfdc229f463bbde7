"""The champion of a pipeline run against the stack (model files in S3, behind the MLflow server's login),
loaded and served in fresh processes: the same predictions as the final stage's."""

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import subprocess_env
from tests.integration.conftest import PipelineRun
from tests.integration.helpers import stack_client
from tests.test_champion_model import assert_same_predictions, free_port, served, stage_predictions

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_stack_champion_loads_and_serves_with_the_final_stage_predictions(
    pipeline_run: PipelineRun, tmp_path: Path
) -> None:
    result, stack = pipeline_run.result, pipeline_run.stack
    assert result.final is not None
    assert result.final.registry is not None
    stack_client(stack)  # logs this process's MLflow client in (through the environment)
    rows, expected = stage_predictions(result)
    name = f"models:/{result.final.registry.model_name}@champion"
    login = {
        "MLFLOW_TRACKING_USERNAME": stack.auth.mlflow_username,
        "MLFLOW_TRACKING_PASSWORD": stack.auth.mlflow_password,
    }
    env = subprocess_env(tmp_path, MLFLOW_TRACKING_URI=result.tracking_uri, **login)
    rows.to_parquet(tmp_path / "in.parquet")
    code = "import sys, mlflow, pandas as pd\nmodel = mlflow.pyfunc.load_model(sys.argv[1])\n"
    code += "model.predict(pd.read_parquet(sys.argv[2])).to_json(sys.argv[3], orient='split')"
    args = [sys.executable, "-c", code, name, str(tmp_path / "in.parquet"), str(tmp_path / "out.json")]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_predictions(
        pd.read_json(tmp_path / "out.json", orient="split", dtype=False), expected, "classification"
    )
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", name, "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with served(command, env, tmp_path / "serve.log") as base:
        body = json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}).encode()
        request = urllib.request.Request(f"{base}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())["predictions"]
    assert_same_predictions(pd.DataFrame(answer), expected, "classification")
