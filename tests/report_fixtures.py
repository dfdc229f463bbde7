"""One tiny digits run shared by the report tests (and their browser tests), with its report written by the CLI.

Both test modules import the `reported_run` fixture; the run itself is made once per session (a
pipeline run costs ~15 s), and each module gets the same `ReportedRun`.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import typer
from typer.testing import CliRunner

from flows.tune_pipeline import tune_pipeline
from schemas.pipeline import PipelineResult, SearchStageResult
from schemas.search import TrialRecord
from stagetune.cli_report import compare, report
from stagetune.stages.search_summary import top_trials
from tests.conftest import tiny_config

# The report commands on their own app, as stagetune/cli.py wires them (`stagetune report`, `stagetune compare`).
report_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
report_app.command()(report)
report_app.command()(compare)


@dataclass(frozen=True)
class ReportedRun:
    """A finished tiny pipeline run, its flow run, and the report `stagetune report` wrote for it."""

    result: PipelineResult
    flow_run_id: UUID
    workdir: Path
    report_dir: Path

    @property
    def summary(self) -> dict[str, Any]:
        """The summary JSON of the report (key numbers, sections)."""
        return dict(json.loads((self.report_dir / "report_summary.json").read_text(encoding="utf-8")))

    @property
    def html(self) -> str:
        """The report's HTML text."""
        return (self.report_dir / "report.html").read_text(encoding="utf-8")


_CACHE: dict[str, ReportedRun] = {}


def run_cli(*args: str) -> Any:
    """Invoke the report app in-process; returns typer's result (exit_code, output)."""
    return CliRunner().invoke(report_app, list(args))


def _reported(tmp_path_factory: pytest.TempPathFactory, key: str, *overrides: str) -> ReportedRun:
    if key not in _CACHE:
        workdir = tmp_path_factory.mktemp(f"report-{key}")
        state = tune_pipeline(tiny_config(workdir, "tracking.report=true", *overrides), return_state=True)
        result = state.result()
        assert isinstance(result, PipelineResult)
        flow_run_id = state.state_details.flow_run_id
        assert flow_run_id is not None
        out = workdir / "report-cli"
        outcome = run_cli(
            "report", result.mlflow_parent_run_id, "--out", str(out), "--tracking-uri", result.tracking_uri
        )
        assert outcome.exit_code == 0, outcome.output
        _CACHE[key] = ReportedRun(result, flow_run_id, workdir, out)
    return _CACHE[key]


@pytest.fixture(scope="session")
def reported_run(tmp_path_factory: pytest.TempPathFactory, prefect_server: str) -> ReportedRun:
    """The tiny digits run (through Prefect and MLflow) and its report from `stagetune report RUN_ID --out DIR`."""
    return _reported(tmp_path_factory, "digits")


@pytest.fixture(scope="session")
def reported_regression_run(tmp_path_factory: pytest.TempPathFactory, prefect_server: str) -> ReportedRun:
    """A tiny two-output regression run (Friedman #1 and a second target) and its report."""
    return _reported(
        tmp_path_factory,
        "regression",
        "data.source=builtin:synthetic_regression",
        "data.synthetic_regression.n_samples=300",
        "data.synthetic_regression.n_outputs=2",
        "coarse.n_trials=3",
        "refine.n_trials=2",
        "refine.narrowing.top_k=2",
        "refine.warm_start=1",
    )


def many_trials(stage: SearchStageResult, count: int) -> SearchStageResult:
    """`stage` with `count` trials made from its own (values and learning rates spread; every 5th pruned)."""
    trials: list[TrialRecord] = []
    for number in range(count):
        base = stage.trials[number % len(stage.trials)]
        factor = 1.0 + 0.5 * math.sin(number)  # deterministic spread of values and learning rates
        state = "PRUNED" if number % 5 == 4 else "COMPLETE"
        hp = base.hyperparams.model_copy(update={"learning_rate": base.hyperparams.learning_rate * factor})
        params = {k: (hp.learning_rate if k.startswith("learning_rate") else v) for k, v in base.params.items()}
        update = {"number": number, "state": state, "value": (base.value or 1.0) * factor, "hyperparams": hp}
        trials.append(base.model_copy(update={**update, "params": params}))
    best = top_trials(trials, stage.direction, 1)[0]
    counts = {"COMPLETE": sum(t.state == "COMPLETE" for t in trials), "PRUNED": count // 5, "FAIL": 0}
    return stage.model_copy(update={"trials": trials, "best": best, "counts": counts})
