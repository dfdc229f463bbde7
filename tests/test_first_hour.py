"""What a new user meets first: help screens, the run's last lines, `report RUN`, the MLflow UI's view."""

from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from schemas.pipeline import PipelineResult
from schemas.run_state import RunState
from stagetune.cli import app, closing_lines
from stagetune.cli_report import resolve_run
from stagetune.tracking.run_tree import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, ensure_experiment

runner = CliRunner()
COMMANDS = [[], ["run"], ["worker"], ["validate"], ["schema"], ["report"], ["compare"], ["serve"]]
COMMANDS += [["stack"], ["stack", "up"], ["stack", "down"], ["stack", "status"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "stagetune")
def test_help_shows_flags_without_a_type_placeholder(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "140"})
    assert result.exit_code == 0, result.output
    assert "--help" in result.output
    assert "<bool>" not in result.output


def _result(tracking_uri: str) -> PipelineResult:
    # Only the three fields the closing lines read.
    fields: dict[str, Any] = {"mlflow_parent_run_id": "abc123", "mlflow_experiment_id": "7"}
    fields["tracking_uri"] = tracking_uri
    return PipelineResult.model_construct(**fields)


def test_the_last_lines_name_the_report_and_how_to_open_the_run(tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    lines = closing_lines(_result("sqlite:////w/mlflow.db"), html)
    assert lines == [
        "MLflow run: abc123 (experiment 7)",
        f"Report: {html}",
        "MLflow UI: mlflow ui --backend-store-uri sqlite:////w/mlflow.db",
        "           then open http://127.0.0.1:5000/#/experiments/7/runs/abc123?workflowType=machine_learning",
    ]
    server = closing_lines(_result("https://ci:s3cr3t@mlflow.example.com/"), None)
    assert server[-1] == (
        "MLflow UI: open https://mlflow.example.com/#/experiments/7/runs/abc123?workflowType=machine_learning"
    )
    assert not any("s3cr3t" in line or line.startswith("Report") for line in server)


def test_report_takes_a_run_folder_name_or_path_as_resume_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default workdir, ./stagetune-runs
    folder = tmp_path / "stagetune-runs" / "runs" / "digits-20261206-0501"
    folder.mkdir(parents=True)
    state = RunState(
        run=folder.name, name="digits", config_fingerprint="f", status="completed",
        tracking_uri="sqlite:///x.db", experiment_id="1", parent_run_id="parent-id",
    )  # fmt: skip
    (folder / "state.json").write_text(state.model_dump_json(), encoding="utf-8")
    assert resolve_run(folder.name) == ("parent-id", "sqlite:///x.db", folder.name)
    assert resolve_run(str(folder)) == ("parent-id", "sqlite:///x.db", folder.name)
    assert resolve_run("parent-id") == ("parent-id", "sqlite:///x.db", folder.name)
    assert resolve_run("0123abcd") == ("0123abcd", None, "0123abcd")  # not a folder: an MLflow run id


def test_experiments_open_as_model_training_unless_their_kind_was_chosen(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    new = ensure_experiment(client, "fresh", None)
    assert client.get_experiment(new).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    older = client.create_experiment("older")  # made before stagetune set the tag
    assert ensure_experiment(client, "older", None) == older
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    ensure_experiment(client, "chosen", None)
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"
