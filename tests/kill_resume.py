"""Kill `stagetune run` with SIGKILL at random points of every stage, re-run the same command, check
that nothing was lost or done twice. Used by tests/test_kill_resume.py (a few kills) and on its own:

    .venv/bin/python -m tests.kill_resume --kills 12 --seed 1     # prints a table, exit 1 on a violation

Besides the kills spread over the stages, one kill lands right after the final stage has registered
its model version and before its result is saved (`--no-registration-kill` leaves it out): the
registry is polled from outside, the run is killed the moment the version appears.

Each attempt runs the real CLI in its own process group (killing the group is what a crashed machine
does to the run), against one Prefect API shared by the attempts.
"""

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from schemas.urls import default_storage_url, journal_path
from stagetune.runtime import configure_process
from stagetune.search.study import open_storage

REPO = Path(__file__).resolve().parents[1]
STAGES = ("sample", "sanity", "coarse", "refine", "final")
BUDGET = {"coarse": 6, "refine": 6}
CONFIG = {
    "name": "killed",
    "sample": {"max_rows": 300},
    "sanity": {
        "overfit_samples": 60,
        "overfit_batch_size": 30,
        "overfit_max_steps": 300,
        "lr_range_steps": 30,
        "baseline_epochs": 2,
    },
    "coarse": {"n_trials": BUDGET["coarse"], "epochs": 2},
    "refine": {"n_trials": BUDGET["refine"], "epochs": 3, "narrowing": {"top_k": 2}, "warm_start": 2},
    "final": {"max_epochs": 4},
    "search": {"heartbeat_seconds": 1, "stale_after_seconds": 5},
    "tracking": {"report": False},
    "execution": {"device": "cpu"},
}
REGISTERED = "final (model version registered)"  # the kill aimed just after registration
TrialKey = tuple[str, int]
TrialFacts = tuple[str, dict[str, Any], float | None]


@dataclass
class Campaign:
    """What happened: where each kill landed and what the finished trials were at that moment."""

    kills: list[str] = field(default_factory=list)
    attempts: int = 0
    snapshots: list[dict[TrialKey, TrialFacts]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    retried_trials: int = 0
    seconds: float = 0.0


def run_campaign(
    workdir: Path, kills: int, seed: int, env: dict[str, str], timeout: float = 600, registration_kill: bool = True
) -> Campaign:
    """Kill the run `kills` times (cycling through the stages, random moment within each), and once more
    right after its model version is registered (`registration_kill`), then let it finish; return what
    happened, with every violated guarantee listed in `violations`."""
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "killed.yaml"
    config_path.write_text(yaml.safe_dump({**CONFIG, "execution": {**CONFIG["execution"], "workdir": str(workdir)}}))
    campaign = Campaign()
    started = time.monotonic()
    targets = kill_plan(kills) + ([REGISTERED] if registration_kill else [])
    while True:
        campaign.attempts += 1
        with _attempt(config_path, workdir, env, workdir / f"attempt-{campaign.attempts}.log") as process:
            target = targets[len(campaign.kills)] if len(campaign.kills) < len(targets) else None
            state = _state(workdir)
            began = state["attempts"] if state else 0
            deadline = time.monotonic() + timeout
            if target == REGISTERED:
                reached = _wait_for_version(began, workdir, process, deadline)
            else:
                reached = target is not None and _wait_inside(target, began, workdir, process, rng, deadline)
            if reached:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                stage = _stage_now(workdir) or "start-up"
                campaign.kills.append(REGISTERED if target == REGISTERED and stage == "final" else stage)
                campaign.snapshots.append(_finished_trials(workdir))
                continue
            code = process.wait(timeout=timeout)
            if code != 0:
                output = (workdir / f"attempt-{campaign.attempts}.log").read_text(errors="replace")
                campaign.violations.append(f"attempt {campaign.attempts} exited {code}: {output[-2000:]}")
            break
    campaign.seconds = time.monotonic() - started
    _check(workdir, campaign)
    return campaign


@contextmanager
def _attempt(config_path: Path, workdir: Path, env: dict[str, str], log: Path) -> Iterator["subprocess.Popen[str]"]:
    command = [str(Path(sys.executable).with_name("stagetune")), "run", str(config_path)]
    if os.environ.get("KILL_RESUME_VERBOSE"):
        command.append("--verbose")
    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=output, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def kill_plan(kills: int) -> list[str]:
    """Which stage each kill aims at, in pipeline order: the same number per stage, extra kills going to
    the searches first (a run can be killed several times in one stage; each attempt redoes or continues it)."""
    per_stage = dict.fromkeys(STAGES, kills // len(STAGES))
    for stage in ("coarse", "refine", "final", "sample", "sanity")[: kills % len(STAGES)]:
        per_stage[stage] += 1
    return [stage for stage in STAGES for _ in range(per_stage[stage])]


def _wait_inside(
    stage: str,
    attempts_before: int,
    workdir: Path,
    process: "subprocess.Popen[str]",
    rng: random.Random,
    deadline: float,
) -> bool:
    """Wait until this attempt has opened the run (its attempt count went up) and is inside `stage` (for
    a search: after a random number of its trials), then a random moment more; False when the process
    ended first."""
    last = BUDGET.get(stage, 1) - 1  # finished trials while a search's last trial runs (0: not a search)
    finished_now = _n_finished(workdir, stage)
    finished_before = rng.randint(min(finished_now, max(last - 1, 0)), max(last - 1, 0))
    while time.monotonic() < deadline and process.poll() is None:
        state = _state(workdir)
        opened = state is not None and state["attempts"] > attempts_before
        if opened and _stage_now(workdir) == stage and _n_finished(workdir, stage) >= finished_before:
            # A random moment more, cut short once only the search's last trial is left running: the kill
            # then still lands inside the stage however short its trials are.
            until = time.monotonic() + rng.uniform(0.0, 0.8)
            while time.monotonic() < until and process.poll() is None:
                if last > 0 and _n_finished(workdir, stage) >= last:
                    break
                time.sleep(0.01)
            return process.poll() is None
        time.sleep(0.05)
    return False


def _wait_for_version(attempts_before: int, workdir: Path, process: "subprocess.Popen[str]", deadline: float) -> bool:
    """Wait until this attempt has registered a model version (read straight from the MLflow database,
    every few milliseconds: the version exists ~0.5-1.4 s before the final result is saved); False
    when the process ended first."""
    database = workdir / "mlflow.db"
    while time.monotonic() < deadline and process.poll() is None:
        state = _state(workdir)
        if state is not None and state["attempts"] > attempts_before and _n_versions(database) > 0:
            return process.poll() is None
        time.sleep(0.005)
    return False


def _n_versions(database: Path) -> int:
    if not database.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as connection:
            return int(connection.execute("SELECT count(*) FROM model_versions").fetchone()[0])
    except sqlite3.Error:  # tables not created yet, or locked for longer than the timeout
        return 0


def _run_dir(workdir: Path) -> Path | None:
    runs = sorted((workdir / "runs").glob("killed-*"))
    return runs[-1] if runs else None


def _state(workdir: Path) -> dict[str, Any] | None:
    run_dir = _run_dir(workdir)
    try:
        return json.loads((run_dir / "state.json").read_text()) if run_dir else None
    except (OSError, ValueError):
        return None


def _stage_now(workdir: Path) -> str | None:
    """The first stage whose result is not stored yet (None before the run folder exists)."""
    state = _state(workdir)
    if state is None:
        return None
    return next((stage for stage in STAGES if stage not in state["stages_done"]), "report")


def _storage(workdir: Path) -> str:
    """The run's Optuna storage, the default one (a journal file in the workdir)."""
    return default_storage_url(workdir)


def _studies(workdir: Path) -> dict[str, optuna.Study]:
    run_dir = _run_dir(workdir)
    studies: dict[str, optuna.Study] = {}
    if run_dir is None or not _storage_ready(_storage(workdir)):
        return studies
    for stage in BUDGET:
        with suppress(KeyError):
            studies[stage] = optuna.load_study(
                study_name=f"{run_dir.name}-{stage}", storage=open_storage(_storage(workdir))
            )
    return studies


def _storage_ready(url: str) -> bool:
    """Whether the run has created its storage. A journal is ready once its file exists (opening a missing
    one would create it); a SQLite database once Optuna has finished creating its tables (it stamps
    alembic_version last: opening the storage earlier would race the pipeline's own schema creation)."""
    journal = journal_path(url)
    if journal is not None:
        return journal.exists()
    database = Path(url.removeprefix("sqlite:///"))
    if not database.exists():
        return False
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)) as connection:
            return bool(connection.execute("SELECT version_num FROM alembic_version").fetchall())
    except sqlite3.Error:
        return False


def _n_finished(workdir: Path, stage: str) -> int:
    if stage not in BUDGET:
        return 0
    study = _studies(workdir).get(stage)
    return 0 if study is None else sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))


def _finished_trials(workdir: Path) -> dict[TrialKey, TrialFacts]:
    facts: dict[TrialKey, TrialFacts] = {}
    for stage, study in _studies(workdir).items():
        for trial in study.get_trials(deepcopy=False):
            if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
                facts[(stage, trial.number)] = (trial.state.name, dict(trial.params), trial.value)
    return facts


def _check(workdir: Path, campaign: Campaign) -> None:
    problems = campaign.violations
    state = _state(workdir)
    runs = list((workdir / "runs").glob("killed-*"))
    if len(runs) != 1 or state is None:
        problems.append(f"expected one run folder, found {len(runs)}")
        return
    if state["status"] != "completed" or state["stages_done"] != [*STAGES, "pipeline"]:
        problems.append(f"run state {state['status']} with stages {state['stages_done']}")
    for stage, study in _studies(workdir).items():
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        if done != BUDGET[stage]:
            problems.append(f"{stage}: {done} COMPLETE+PRUNED trials for a budget of {BUDGET[stage]}")
        left = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        if left:
            problems.append(f"{stage}: trials {left} left RUNNING/WAITING")
        campaign.retried_trials += sum("retry_of" in t.user_attrs for t in trials)
        problems.extend(_repeated_points(stage, trials))
    final = _finished_trials(workdir)
    for number, snapshot in enumerate(campaign.snapshots, start=1):
        changed = [key for key, facts in snapshot.items() if final.get(key) != facts]
        if changed:
            problems.append(f"after kill {number}: finished trials {changed} changed or disappeared")
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("stagetune")
    if experiment is None:
        problems.append("no MLflow experiment")
        return
    all_runs = client.search_runs([experiment.experiment_id], max_results=5000)
    running = [r.info.run_name for r in all_runs if r.info.status == "RUNNING"]
    if running:
        problems.append(f"MLflow runs left RUNNING: {running}")
    problems.extend(_told_trials_not_recorded(workdir, {r.info.run_id: r for r in all_runs}))
    problems.extend(stores_disagree(workdir, all_runs))
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    if len(parents) != 1 or parents[0].info.run_id != state["parent_run_id"]:
        problems.append(f"{len(parents)} parent runs (one expected, reused by every attempt)")
    stage_runs = [r for r in all_runs if parents and r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    for stage in STAGES:
        finished = [
            r for r in stage_runs if r.data.tags.get("stagetune.stage") == stage and r.info.status == "FINISHED"
        ]
        if len(finished) != 1:
            problems.append(f"{len(finished)} FINISHED {stage} stage runs (one expected)")
    versions = client.search_model_versions(f"name = '{CONFIG['name']}'")
    if len(versions) != 1:
        problems.append(f"{len(versions)} model versions registered (one expected for one pipeline run)")
    elif versions[0].tags.get("stagetune.pipeline_run") != state["parent_run_id"]:
        problems.append("the model version is not tagged with the pipeline run")
    elif int(versions[0].version) not in {int(v) for v in client.get_registered_model(CONFIG["name"]).aliases.values()}:
        problems.append(f"model version {versions[0].version} has no alias")


def stores_disagree(workdir: Path, runs: list[Any]) -> list[str]:
    """Trials whose state differs between Optuna and MLflow: a COMPLETE/PRUNED trial has one FINISHED
    run with that state, a FAIL trial no FINISHED run (its runs, if any, FAILED or KILLED)."""
    problems = []
    for stage, study in _studies(workdir).items():
        by_number: dict[int, list[Any]] = {}
        for run in runs:
            if run.data.tags.get("stagetune.study") == study.study_name and "stagetune.trial" in run.data.tags:
                by_number.setdefault(int(run.data.tags["stagetune.trial"]), []).append(run)
        for trial in study.get_trials(deepcopy=False):
            mine = by_number.pop(trial.number, [])
            finished = [r.data.tags.get("stagetune.state") for r in mine if r.info.status == "FINISHED"]
            told = trial.state.name
            if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) and finished != [told]:
                problems.append(f"{stage} trial {trial.number}: {told} in Optuna, FINISHED runs {finished} in MLflow")
            elif trial.state == TrialState.FAIL and finished:
                problems.append(f"{stage} trial {trial.number}: FAIL in Optuna, FINISHED {finished} in MLflow")
            elif trial.state in (TrialState.RUNNING, TrialState.WAITING) and any(
                r.info.status != "RUNNING" for r in mine
            ):
                problems.append(f"{stage} trial {trial.number}: {told} in Optuna, ended in MLflow")
        for number in by_number:
            problems.append(f"{stage}: MLflow trial run(s) {number} with no Optuna trial")
    return problems


def _repeated_points(stage: str, trials: list[FrozenTrial]) -> list[str]:
    """No two finished (COMPLETE/PRUNED) trials of a study share a parameter set (a resumed attempt must
    not propose again what an earlier one tried; a retry repeats only a FAIL trial's parameters)."""
    seen: dict[tuple[tuple[str, Any], ...], int] = {}
    problems = []
    for trial in trials:
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        key = tuple(sorted(trial.params.items()))
        if key in seen:
            problems.append(f"{stage}: trials {seen[key]} and {trial.number} have the same parameters")
        seen.setdefault(key, trial.number)
    return problems


def _told_trials_not_recorded(workdir: Path, runs: dict[str, Any]) -> list[str]:
    """Told trials whose MLflow run is missing, not ended as the trial ended, or without its outcome tag
    (a trial's records are written after Optuna is told: a kill in between must be repaired)."""
    problems = []
    for stage, study in _studies(workdir).items():
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            record = trial.user_attrs.get("stagetune_record")
            run = runs.get((record or {}).get("mlflow_run_id") or "")
            if record is None or run is None:
                problems.append(f"{stage} trial {trial.number}: no record or no MLflow run")
            elif run.info.status != "FINISHED" or run.data.tags.get("stagetune.state") != record["state"]:
                problems.append(f"{stage} trial {trial.number}: MLflow run {run.info.status}, not FINISHED as told")
    return problems


def main() -> int:
    """Run a kill campaign and print where the kills landed and whether every guarantee held."""
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("kill-resume-runs"))
    parser.add_argument(
        "--no-registration-kill",
        action="store_true",
        help="Leave out the extra kill right after the model version is registered.",
    )
    args = parser.parse_args()
    configure_process()
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": str(PREFECT_API_URL.value())}
        workdir = args.workdir.resolve() / f"seed-{args.seed}"
        campaign = run_campaign(workdir, args.kills, args.seed, env, registration_kill=not args.no_registration_kill)
    print(f"{'kill':>4}  stage at kill")
    for number, stage in enumerate(campaign.kills, start=1):
        print(f"{number:>4}  {stage}")
    print(
        f"kills survived: {len(campaign.kills)}, attempts: {campaign.attempts}, trials retried after a kill: "
        f"{campaign.retried_trials}, wall time: {campaign.seconds:.0f} s, Optuna storage: {_storage(workdir)}"
    )
    print("violations: " + ("none" if not campaign.violations else "\n  " + "\n  ".join(campaign.violations)))
    return 1 if campaign.violations else 0


if __name__ == "__main__":
    sys.exit(main())
