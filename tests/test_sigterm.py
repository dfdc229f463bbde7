"""SIGTERM stops `stagetune run` as Ctrl-C does: a message with the resume command, exit 143, and
Optuna and MLflow agreeing on every trial; the resumed run then completes."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from rich.console import Console

from stagetune.cli_errors import guarded
from stagetune.interruption import (
    INTERRUPTED_REASON,
    Terminated,
    set_resume_hint,
    signals_deferred,
    stop_on_sigterm,
)
from tests.conftest import subprocess_env
from tests.kill_resume import CONFIG, _attempt, _repeated_points, _run_dir, _studies, stores_disagree

BUDGET = {"coarse": 6, "refine": 2}


def _interrupted_by(error: BaseException) -> tuple[int, str]:
    def stop() -> None:
        raise error

    console = Console(record=True, width=300)
    with pytest.raises(typer.Exit) as stopped:
        guarded(console, stop)
    return stopped.value.exit_code, console.export_text()


def test_sigterm_and_ctrl_c_exit_with_their_codes_and_the_resume_command() -> None:
    set_resume_hint("continue with: stagetune run --resume runs/x")
    assert _interrupted_by(Terminated("signal SIGTERM")) == (
        143,
        "stopped by SIGTERM: continue with: stagetune run --resume runs/x\n",
    )
    code, text = _interrupted_by(KeyboardInterrupt())
    assert code == 130
    assert text.startswith("interrupted (Ctrl-C): continue with: stagetune run --resume runs/x")


def test_a_signal_inside_a_deferred_block_is_delivered_when_it_ends() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    stop_on_sigterm()
    ours = signal.getsignal(signal.SIGTERM)
    steps: list[str] = []

    def ask_and_submit() -> None:
        with signals_deferred():
            signal.raise_signal(signal.SIGTERM)
            steps.append("asked")
            steps.append("submitted")  # not cut in half

    try:
        with pytest.raises(Terminated):
            ask_and_submit()
        assert steps == ["asked", "submitted"]
        assert signal.getsignal(signal.SIGTERM) is ours  # the handler in place before is back
    finally:
        signal.signal(signal.SIGTERM, previous)


def _training(workdir: Path) -> bool:
    """Whether a coarse trial is running and has reported an epoch (it is training, not just asked)."""
    study = _studies(workdir).get("coarse")
    if study is None:
        return False
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return any(t.intermediate_values for t in running)


def _mlflow_runs(workdir: Path) -> list:  # type: ignore[type-arg]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("stagetune")
    assert experiment is not None
    return client.search_runs([experiment.experiment_id], max_results=1000)


@pytest.mark.integration
@pytest.mark.slow
def test_sigterm_leaves_the_stores_consistent_and_the_run_resumes(tmp_path: Path, prefect_server: str) -> None:
    env = subprocess_env(tmp_path, PREFECT_API_URL=prefect_server)
    env.pop("PREFECT_HOME", None)
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = {
        **CONFIG,
        "sanity": {"enabled": False},
        # Epochs long enough that a trial in flight is mid-training when the signal comes.
        "coarse": {"n_trials": BUDGET["coarse"], "epochs": 30},
        "refine": {"n_trials": BUDGET["refine"], "epochs": 2, "narrowing": {"top_k": 2}, "warm_start": 1},
        "final": {"max_epochs": 2},
        "execution": {"device": "cpu", "workdir": str(workdir), "concurrency": 2},
    }
    config_path = workdir / "killed.yaml"
    config_path.write_text(yaml.safe_dump(config))

    with _attempt(config_path, workdir, env, workdir / "attempt-1.log") as process:
        deadline = time.monotonic() + 300
        # A trial in training (an epoch reported), not just asked: a signal between two trials would find
        # their successors asked but not started, and nothing to stop mid-training.
        while not _training(workdir):
            if process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be stopped"
        process.send_signal(signal.SIGTERM)  # the process alone, as `kill PID` or a supervisor does
        code = process.wait(timeout=180)
    output = (workdir / "attempt-1.log").read_text(errors="replace")
    run_dir = _run_dir(workdir)
    assert run_dir is not None
    assert code == 143, output[-3000:]
    assert f"stopped by SIGTERM: finished work is kept; continue with: stagetune run --resume {run_dir}" in output
    assert "Traceback" not in output

    runs = _mlflow_runs(workdir)
    assert stores_disagree(workdir, runs) == []
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    trials = _studies(workdir)["coarse"].get_trials(deepcopy=False)
    assert [t.number for t in trials if t.state == TrialState.RUNNING] == []
    # The trials in flight were stopped at their next epoch, failed in Optuna with a retry queued, and
    # their MLflow runs ended KILLED: not finished behind Optuna's back.
    interrupted = [t for t in trials if t.user_attrs.get("fail_reason") == INTERRUPTED_REASON]
    assert len([t for t in trials if t.state == TrialState.WAITING]) == len(interrupted)
    trained = {str(t.number) for t in interrupted if "stagetune_record" in t.user_attrs}  # not just asked
    assert trained
    assert trained <= {r.data.tags.get("stagetune.trial") for r in runs if r.info.status == "KILLED"}

    command = [str(Path(sys.executable).with_name("stagetune")), "run", "--resume", str(run_dir)]
    resumed = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = _mlflow_runs(workdir)
    assert stores_disagree(workdir, runs) == []
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    for stage, study in _studies(workdir).items():
        trials = study.get_trials(deepcopy=False)
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == BUDGET[stage]
        assert _repeated_points(stage, trials) == []
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.status for r in parent] == ["FINISHED"]
    assert (run_dir / "results" / "pipeline.json").is_file()
