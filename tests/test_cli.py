"""The `stagetune` command: exit codes, messages, --summary; `run` end to end in a child process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stagetune.cli import app
from tests.conftest import REPO, TINY_OVERRIDES, subprocess_env

runner = CliRunner()


def _stagetune(tmp_path: Path, *args: str, prefect_api: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a child process in `tmp_path`: against `prefect_api`, or in ephemeral mode."""
    command = [sys.executable, "-m", "stagetune", *args]
    env = subprocess_env(tmp_path, **({"PREFECT_API_URL": prefect_api} if prefect_api else {}))
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def _tiny(tmp_path: Path) -> list[str]:
    return [arg for override in TINY_OVERRIDES for arg in ("--set", override)]


def test_validate_accepts_the_example_configs() -> None:
    result = runner.invoke(app, ["validate", str(REPO / "configs" / "digits.yaml"), "--show"])
    assert result.exit_code == 0, result.output
    assert "builtin:digits" in result.output


def test_validate_rejects_a_bad_value_with_one_paragraph() -> None:
    result = runner.invoke(app, ["validate", "--set", "coarse.epochs=0"])
    assert result.exit_code == 2
    assert "coarse.epochs" in result.output
    assert "greater than or equal to 1" in result.output
    assert "Traceback" not in result.output


def test_validate_rejects_a_missing_config_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_unknown_option_is_a_usage_error() -> None:
    assert runner.invoke(app, ["run", "--no-such-option"]).exit_code == 2


def test_schema_lists_every_section() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert {"name", "seed", "data", "sample", "model", "sanity", "coarse", "refine", "final"} <= set(
        schema["properties"]
    )
    assert {"tracking", "execution", "space"} <= set(schema["properties"])


def test_run_refuses_a_summary_path_in_a_missing_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "--summary", str(tmp_path / "no" / "such" / "out.json")])
    assert result.exit_code == 2
    assert "--summary" in result.output


@pytest.mark.integration
@pytest.mark.slow
def test_run_end_to_end_writes_the_summary(tmp_path: Path) -> None:
    # Prefect in ephemeral mode, as the README's first command runs it.
    done = _stagetune(tmp_path, "run", str(REPO / "configs" / "digits.yaml"), *_tiny(tmp_path), "--summary", "s.json")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "database is locked" not in done.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["status"] == "completed"
    assert summary["stages_completed"] == ["sample", "sanity", "coarse", "refine", "final"]
    assert summary["best_hyperparams"]["learning_rate"] > 0
    assert set(summary["test_metrics"]) >= {"accuracy", "balanced_accuracy", "macro_f1"}
    assert summary["registered_model"]["alias"] == "champion"
    assert summary["narrowing"]["changes"]
    assert summary["narrowed_space"]["dropout"]
    assert len(summary["coarse"]["trials"]) == 4
    assert summary["name"] == "digits"
    assert summary["mlflow_parent_run_id"] in done.stdout
    assert summary["sanity"]["passed"] is True
    assert (tmp_path / "stagetune-runs" / "mlflow.db").is_file()


@pytest.mark.integration
@pytest.mark.slow
def test_run_exits_3_with_a_diagnosis_when_the_gate_fails(tmp_path: Path, prefect_server: str) -> None:
    broken = ["--set", "model.family=custom", "--set", "model.import_path=tests.broken_models:nan_output"]
    done = _stagetune(tmp_path, "run", *_tiny(tmp_path), *broken, "--summary", "s.json", prefect_api=prefect_server)
    assert done.returncode == 3, done.stderr
    assert "nan_loss" in done.stderr
    assert "Traceback" not in done.stderr
    assert json.loads((tmp_path / "s.json").read_text())["status"] == "sanity_failed"


@pytest.mark.integration
@pytest.mark.slow
def test_run_exits_2_on_bad_data_without_traceback_or_runs(tmp_path: Path, prefect_server: str) -> None:
    (tmp_path / "one-class.csv").write_text("x,y\n" + "".join(f"{i},a\n" for i in range(30)))
    args = ["--set", "data.source=one-class.csv", "--set", "data.target=y"]
    done = _stagetune(tmp_path, "run", *args, prefect_api=prefect_server)
    assert done.returncode == 2, done.stderr
    assert "data.target" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "stagetune-runs" / "mlflow.db").exists()
