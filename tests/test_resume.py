"""A pipeline run that stopped continues where it stopped: stored stages are not run again, the studies
continue (a trial left running is failed and retried), the MLflow parent run is reused."""

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from flows.tune_pipeline import tune_pipeline
from schemas.search import TrialRecord
from stagetune.errors import InputError
from stagetune.run_store import config_fingerprint, open_run
from stagetune.search.study import open_storage, storage_url
from stagetune.stages import trial as trial_module
from stagetune.stages.lost_records import RECOVERED_TAG
from stagetune.stages.search_session import SearchSession
from stagetune.stages.trial import TrialContext, trial_seed
from tests.conftest import tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
STAGES = ("sample", "sanity", "coarse", "refine", "final")


def _state(run_dir: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((run_dir / "state.json").read_text())
    return state


def _finished_trials(storage: str, study: str) -> dict[int, tuple[str, dict[str, Any], float | None]]:
    trials = optuna.load_study(study_name=study, storage=open_storage(storage)).get_trials()
    return {t.number: (t.state.name, t.params, t.value) for t in trials if t.state.is_finished()}


def test_a_run_that_crashed_mid_refinement_resumes_without_redoing_finished_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(tmp_path, "refine.n_trials=5")
    real_tell = SearchSession.tell
    told = {"refine": 0}
    crashing: set[int] = set()

    def crash_on_third_refine_trial(session: SearchSession, trial: optuna.Trial, record: Any) -> None:
        if session.stage == "refine":
            told["refine"] += 1
            # Every try of that trial fails (the stopping search tries again to tell what finished): as
            # if the process had died there, the trial is left RUNNING.
            if told["refine"] == 3 or trial.number in crashing:
                crashing.add(trial.number)
                raise RuntimeError("simulated crash while telling a refinement trial")
        real_tell(session, trial, record)

    monkeypatch.setattr(SearchSession, "tell", crash_on_third_refine_trial)
    with pytest.raises(RuntimeError, match="simulated crash"):
        tune_pipeline(config)
    monkeypatch.undo()

    [run_dir] = list((tmp_path / "runs").iterdir())
    first = _state(run_dir)
    assert first["status"] == "failed"
    assert first["stages_done"] == ["sample", "sanity", "coarse"]
    coarse_before = (run_dir / "results" / "coarse.json").read_text()
    storage = storage_url(config)
    assert storage == f"journal:///{tmp_path.resolve() / 'optuna.journal'}"  # the default storage
    assert not (tmp_path / "optuna.db").exists()
    refine_study = f"{run_dir.name}-refine"
    before = _finished_trials(storage, refine_study)
    assert len(before) == 2  # two refinement trials were told before the crash
    crashed = optuna.load_study(study_name=refine_study, storage=open_storage(storage)).get_trials(
        states=(TrialState.RUNNING,)
    )
    assert len(crashed) == 1

    result = tune_pipeline(config)  # the same call again: continues the same run

    assert result.status == "completed"
    assert list((tmp_path / "runs").iterdir()) == [run_dir]
    second = _state(run_dir)
    assert (second["status"], second["attempts"], second["stages_done"][-1]) == ("completed", 2, "pipeline")
    assert second["parent_run_id"] == first["parent_run_id"] == result.mlflow_parent_run_id
    assert (run_dir / "results" / "coarse.json").read_text() == coarse_before  # not run again

    after = optuna.load_study(study_name=refine_study, storage=open_storage(storage)).get_trials()
    assert {n: v for n, v in _finished_trials(storage, refine_study).items() if n in before} == before
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in after) == 5  # the budget, exactly
    assert not [t for t in after if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    killed = next(t for t in after if t.number == crashed[0].number)
    assert killed.state == TrialState.FAIL
    [retry] = [t for t in after if t.user_attrs.get("retry_of") == killed.number]
    assert retry.params == killed.params
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert result.refine is not None
    assert next(r for r in result.refine.trials if r.number == killed.number).fail_reason.startswith("killed")

    client = MlflowClient(result.tracking_uri)
    runs = client.search_runs([result.mlflow_experiment_id], max_results=1000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    stage_runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.mlflow_parent_run_id]
    for stage in STAGES:
        finished = [r for r in stage_runs if r.data.tags["stagetune.stage"] == stage and r.info.status == "FINISHED"]
        assert len(finished) == 1, stage
    assert len([r for r in runs if "mlflow.parentRunId" not in r.data.tags]) == 1  # one parent, reused


def test_a_finished_run_is_not_resumed_and_new_forces_a_fresh_run(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path,
        "sanity.enabled=false",
        "coarse.n_trials=2",
        "refine.n_trials=0",
        "refine.warm_start=0",
        "refine.narrowing.top_k=1",
        "refine.narrowing.min_completed=1",
    )
    first = tune_pipeline(config)
    second = tune_pipeline(config)
    assert first.mlflow_parent_run_id != second.mlflow_parent_run_id
    assert len(list((tmp_path / "runs").iterdir())) == 2
    with pytest.raises(InputError, match="already ended"):
        tune_pipeline(config, resume=sorted((tmp_path / "runs").iterdir())[0].name)


def test_resume_refuses_other_settings_and_auto_resume_skips_them(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    run = open_run(config)
    run.release()  # an unfinished run (as if killed right after it started)
    other = tiny_config(tmp_path, "coarse.epochs=3")
    with pytest.raises(InputError, match=r"coarse\.epochs") as error:
        open_run(other, resume=run.dir.name)
    assert error.value.field == "--resume"
    fresh = open_run(other)
    fresh.release()
    assert fresh.dir != run.dir
    assert not fresh.resumed
    again = open_run(tiny_config(tmp_path, "execution.concurrency=2"))  # execution settings may differ
    again.release()
    assert again.dir == run.dir
    assert again.resumed
    assert again.state.attempts == 2


def test_a_run_being_run_by_another_process_is_not_taken(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    held = open_run(config)
    try:
        with pytest.raises(InputError, match="another process"):
            open_run(config, resume=held.dir.name)
        other = open_run(config)
        other.release()
        assert other.dir != held.dir
    finally:
        held.release()


def test_the_fingerprint_ignores_execution_and_tracking_niceties(tmp_path: Path) -> None:
    base = config_fingerprint(tiny_config(tmp_path))
    assert config_fingerprint(tiny_config(tmp_path / "elsewhere", "execution.concurrency=4")) == base
    assert config_fingerprint(tiny_config(tmp_path, "tracking.report=true", "search.max_retries=5")) == base
    assert config_fingerprint(tiny_config(tmp_path, "seed=1")) != base


def test_cli_refuses_resume_with_new_and_an_unknown_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from stagetune.cli import app

    monkeypatch.chdir(tmp_path)
    both = CliRunner().invoke(app, ["run", "--resume", "x", "--new"])
    assert both.exit_code == 2
    assert "--new" in both.output
    unknown = CliRunner().invoke(app, ["run", "--resume", "no-such-run"])
    assert unknown.exit_code == 2
    assert "--resume" in unknown.output
    assert "Traceback" not in unknown.output


def test_cli_resume_alone_uses_the_run_s_own_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stagetune.cli import _run_config

    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path / "stagetune-runs", "coarse.epochs=5")
    run = open_run(config)
    run.release()
    assert _run_config(None, [], run.dir.name, False) == config


def test_a_told_trial_whose_queued_mlflow_records_were_lost_is_rebuilt_from_the_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A trial's MLflow records are written on a background thread after Optuna was told its outcome: a
    # process killed in between leaves the run RUNNING and empty. Here trial 1's queued records are dropped.
    real_record = trial_module._record

    def drop_coarse_trial_1(context: TrialContext, client: MlflowClient, record: TrialRecord, *rest: Any) -> None:
        if context.stage != "coarse" or record.number != 1:
            real_record(context, client, record, *rest)

    monkeypatch.setattr(trial_module, "_record", drop_coarse_trial_1)
    config = tiny_config(tmp_path)

    result = tune_pipeline(config)

    assert result.status == "completed"
    assert result.coarse is not None
    client = MlflowClient(result.tracking_uri)
    lost = next(r for r in result.coarse.trials if r.number == 1)
    assert lost.mlflow_run_id is not None
    assert lost.value is not None
    run = client.get_run(lost.mlflow_run_id)
    assert run.info.status == ("FAILED" if lost.state == "FAIL" else "FINISHED")
    assert run.data.tags["stagetune.state"] == lost.state
    assert "rebuilt from the Optuna study" in run.data.tags[RECOVERED_TAG]
    assert run.data.params["epochs"] == str(config.coarse.epochs)
    assert run.data.params["seed"] == str(trial_seed(config.seed, "coarse", 1))
    assert run.data.params["optimizer"] == lost.hyperparams.optimizer
    assert run.data.metrics["objective"] == pytest.approx(lost.value)
    objective_curve = client.get_metric_history(lost.mlflow_run_id, "val/loss")
    assert len(objective_curve) == lost.epochs_run
    assert "train/loss" not in run.data.metrics  # lost with the queue: only the study's curve comes back

    kept = next(r for r in result.coarse.trials if r.number == 0)
    assert kept.mlflow_run_id is not None
    intact = client.get_run(kept.mlflow_run_id)
    assert RECOVERED_TAG not in intact.data.tags
    assert "train/loss" in intact.data.metrics
