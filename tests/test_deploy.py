"""Scheduled deployments: `stagetune serve` and prefect.yaml against a real `prefect server start` on loopback."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import typer
import yaml
from mlflow.tracking import MlflowClient
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ParameterTypeError
from typer.testing import CliRunner

from flows.deployment import tune_deployment
from flows.tune_pipeline import tune_pipeline
from schemas.config import PipelineConfig
from stagetune.cli_deploy import serve
from stagetune.config_loading import load_config, validate_config
from stagetune.deploy import config_with_overrides, deployment_parameters
from stagetune.errors import InputError
from stagetune.stages.pipeline_run import resolve_tracking
from tests.conftest import REPO, TINY_OVERRIDES, subprocess_env, tiny_config, uses_a_server

CRON = "0 3 * * 1"
DIGITS = REPO / "configs" / "digits.yaml"
# Shorter still than the tiny config: the run only has to complete.
SHORTER = (
    *("coarse.n_trials=2", "refine.n_trials=0", "refine.warm_start=0", "refine.narrowing.top_k=1"),
    *("sanity.lr_range_test=false", "sanity.baseline_epochs=0", "final.max_epochs=2", "tracking.trial_plots=false"),
)
AUTH_STRING = "stagetune:deploy-test-token-0123456789"  # the test server's; clients send PREFECT_API_AUTH_STRING
# `stagetune serve` on its own until stagetune/cli.py wires it in: typer runs the one command.
SERVE = [sys.executable, "-m", "stagetune", "serve"]


def _serve_app() -> typer.Typer:
    app = typer.Typer()
    app.command()(serve)
    return app


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ([str(REPO / "configs" / "missing.yaml"), "--cron", CRON], "CONFIG"),
        ([str(DIGITS), "--cron", CRON, "--set", "coarse.n_trials=0"], "coarse.n_trials"),
        ([str(DIGITS), "--cron", "61 * * * *"], "--cron"),
    ],
)
def test_serve_rejects_bad_input_with_exit_code_2(arguments: list[str], field: str) -> None:
    result = CliRunner().invoke(_serve_app(), arguments)
    assert result.exit_code == 2, result.output
    assert f"error in {field}" in " ".join(result.output.split())


def test_serve_needs_a_prefect_server() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = CliRunner().invoke(_serve_app(), [str(DIGITS), "--cron", CRON])
    assert result.exit_code == 2, result.output
    assert "error in PREFECT_API_URL" in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"coarse": {"n_trials": 0}}, "config.coarse.n_trials"),
        ({"execution": {"device": "tpu"}}, "config.execution.device"),
        ({"coarse": {"epochs": 2, "trials": 3}}, "config.coarse.trials"),
        ({"refine": {"warm_start": 9, "n_trials": 2}}, "refine.warm_start"),  # cross-field: pydantic only
    ],
)
def test_prefect_validates_run_parameters_with_the_pipeline_config(config: dict[str, Any], named: str) -> None:
    # What the flow engine does with a deployment run's parameters before the flow starts.
    with pytest.raises(ParameterTypeError) as caught:
        tune_pipeline.validate_parameters({"config": config})
    assert named in str(caught.value)


def test_prefect_yaml_deploys_the_digits_config_weekly_on_a_process_pool() -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    [deployment] = spec["deployments"]
    assert deployment["entrypoint"] == "flows/deployment.py:tune_deployment"
    assert deployment["work_pool"]["name"] == "stagetune-process"
    assert deployment["schedules"] == [{"cron": CRON, "timezone": "UTC"}]
    # The embedded config is configs/digits.yaml, validated the way a run's merged config is.
    parameters = tune_deployment.validate_parameters(deployment["parameters"])
    assert validate_config(parameters["config"]) == load_config(DIGITS)
    assert not parameters.get("overrides")


def _digits() -> dict[str, Any]:
    return deployment_parameters(load_config(DIGITS))["config"]


def test_a_deployment_stores_the_settings_it_was_given_so_data_derived_defaults_still_apply() -> None:
    stored = deployment_parameters(load_config(None, ["data.source=/data/images/", "model.family=cnn"]))["config"]
    assert stored == {"data": {"source": "/data/images/"}, "model": {"family": "cnn"}}
    run_config = config_with_overrides(stored, {"coarse.n_trials": 8})
    assert run_config.data.source == "/data/images/"
    assert run_config.coarse.n_trials == 8
    # Unset budgets stay unset, so the image defaults (stagetune.data.image_defaults) may fill them.
    assert "epochs" not in run_config.coarse.model_fields_set
    assert "depth" not in run_config.space.model_fields_set


@pytest.mark.parametrize(
    "overrides",
    [{"coarse": {"n_trials": 4}}, {"coarse.n_trials": 4}, {"coarse.n_trials": 4, "refine": {"epochs": 3}}],
)
def test_run_overrides_merge_onto_the_deployment_s_config(overrides: dict[str, Any]) -> None:
    merged = config_with_overrides(_digits(), overrides)
    digits = load_config(DIGITS)
    assert merged.coarse.n_trials == 4
    # Everything the run did not name stays the deployment's, not the defaults (digits: 16 -> 4 only).
    assert merged.coarse.epochs == digits.coarse.epochs == 4
    assert merged.final.max_epochs == digits.final.max_epochs == 60
    assert merged.tracking.experiment == "stagetune-digits"
    assert merged.model_copy(update={"coarse": digits.coarse, "refine": digits.refine}) == digits
    assert config_with_overrides(_digits(), {}) == digits


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model.import_path": "os:system"}, "model.import_path"),
        ({"model": {"family": "custom", "import_path": "os:system"}}, "model.import_path"),
        ({"model": None}, "model"),
        ({"data.source": "py:os:system"}, "data.source"),
        ({"data": {"source": "py:tests.broken_models:factory"}}, "data.source"),
        ({"execution.dask_address": "tcp://203.0.113.5:8786"}, "execution.dask_address"),
        ({"coarse.n_trials": 0}, "coarse.n_trials"),
        ({"coarse": {"trials": 3}}, "coarse.trials"),
        ({"coarse..n_trials": 3}, "overrides"),
    ],
)
def test_run_overrides_that_set_code_paths_or_bad_values_are_refused(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InputError) as caught:
        config_with_overrides(_digits(), overrides)
    assert caught.value.field == field


def test_a_deployment_s_own_import_path_is_kept_and_may_be_restated(tmp_path: Path) -> None:
    own = {**_digits(), "model": {"family": "custom", "import_path": "tests.broken_models:correct_mlp"}}
    assert config_with_overrides(own, {"coarse.n_trials": 5}).model.import_path == "tests.broken_models:correct_mlp"
    restated = {"model.import_path": "tests.broken_models:correct_mlp"}
    assert config_with_overrides(own, restated).model.import_path == "tests.broken_models:correct_mlp"
    with pytest.raises(InputError, match=r"model\.import_path"):
        config_with_overrides(own, {"model": {"family": "mlp", "import_path": None}})


def test_the_deployment_flow_refuses_an_import_path_override_before_importing_it(tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    module = tmp_path / "planted_factory.py"
    module.write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\ndef factory(**kw): ...\n")
    config = tiny_config(tmp_path / "work").model_dump(mode="json")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(tmp_path))
        with pytest.raises(InputError, match=r"model\.import_path"):
            tune_deployment.fn(config, {"model": {"family": "custom", "import_path": "planted_factory:factory"}})
    assert not marker.exists()  # refused before anything imported the caller's module
    assert not (tmp_path / "work").exists()  # no run folder, no MLflow store


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
@uses_a_server
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `prefect server start` on a free loopback port with its own PREFECT_HOME and an auth string
    (AUTH_STRING); yields its API URL."""
    home = tmp_path_factory.mktemp("prefect-server")
    url = f"http://127.0.0.1:{_free_port()}/api"
    env = subprocess_env(
        home,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_API_AUTH_STRING=AUTH_STRING,
    )
    port = url.split(":")[2].split("/")[0]
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", port]
    with (home / "server.log").open("w") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_healthy(url, server, home / "server.log")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_until_healthy(url: str, server: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"prefect server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


def _final_state(flow_run_id: Any, timeout: float = 120) -> Any:
    """The final state of a flow run, polled from the API (PREFECT_API_URL set by the caller)."""
    from prefect import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_final():
                return state
            assert time.monotonic() < deadline, f"flow run {flow_run_id} not finished after {timeout} s: {state}"
            time.sleep(0.5)


def _read_deployment(url: str, name: str, waiting_for: subprocess.Popen[bytes] | None = None) -> Any:
    """The deployment `stagetune/<name>`, waiting up to 90 s for it to appear."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + 90
    login = {PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: AUTH_STRING}
    with temporary_settings(login), get_client(sync_client=True) as client:
        while True:
            try:
                return client.read_deployment_by_name(f"stagetune/{name}")
            except ObjectNotFound:
                if waiting_for is not None and waiting_for.poll() is not None:
                    pytest.fail(f"the serving process exited with {waiting_for.returncode}")
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


@pytest.mark.integration
@pytest.mark.slow
def test_served_deployment_has_its_cron_schedule_and_a_triggered_run_completes(
    prefect_api: str, tmp_path: Path
) -> None:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    workdir = tmp_path / "work"
    overrides = [*TINY_OVERRIDES, f"execution.workdir={workdir}", *SHORTER]
    arguments = [str(DIGITS), "--cron", CRON, "--name", "digits-test", *(f"--set={o}" for o in overrides)]
    # Only the settings file names the Prefect server and its auth string: `serve` takes them from there.
    settings_file = tmp_path / "stack.env"
    settings_file.write_text(f"PREFECT_API_URL={prefect_api}\nPREFECT_API_AUTH_STRING={AUTH_STRING}\n")
    env = subprocess_env(tmp_path, STAGETUNE_SETTINGS_FILE=settings_file, PREFECT_RUNNER_POLL_FREQUENCY="1")
    with (tmp_path / "serve.log").open("w") as log:
        server = subprocess.Popen([*SERVE, *arguments], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deployment = _read_deployment(prefect_api, "digits-test", waiting_for=server)
        [schedule] = deployment.schedules
        assert schedule.schedule.cron == CRON
        assert schedule.active
        expected = tiny_config(workdir, *SHORTER, config_file=DIGITS)
        assert deployment.parameters == deployment_parameters(expected)
        assert deployment.enforce_parameter_schema

        with temporary_settings({PREFECT_API_URL: prefect_api, PREFECT_API_AUTH_STRING: AUTH_STRING}):
            # A run changes the deployment's config only through overrides, never its code paths.
            refused = {
                field: cast(FlowRun, run_deployment("stagetune/digits-test", parameters=parameters, timeout=0))
                for field, parameters in (
                    ("model.import_path", {"overrides": {"model.import_path": "os:system"}}),
                    ("config", {"config": {"coarse": {"n_trials": 1}}}),
                )
            }
            partial = {"overrides": {"coarse": {"n_trials": 1}}}
            flow_run = cast(
                FlowRun, run_deployment("stagetune/digits-test", parameters=partial, timeout=240, poll_interval=1)
            )
            for field, created in refused.items():
                state = _final_state(created.id)
                assert state.is_failed(), (field, state)
                assert f"{field}: a flow run cannot" in str(state.message), (field, state.message)
        assert flow_run.state is not None
        assert flow_run.state.is_completed(), (flow_run.state, (tmp_path / "serve.log").read_text()[-3000:])
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    # The run was the pipeline on the tiny config: its parent MLflow run finished, status completed.
    mlflow = MlflowClient(resolve_tracking(expected).tracking_uri)
    experiment = mlflow.get_experiment_by_name(expected.tracking.experiment)
    assert experiment is not None
    # Only the run with the partial override ran (the refused ones left no MLflow run), and it merged:
    # coarse.n_trials from the run, everything else (final.max_epochs=2, refine.n_trials=0) the deployment's.
    [parent] = mlflow.search_runs([experiment.experiment_id], filter_string="tags.`stagetune.pipeline` = 'digits'")
    assert parent.data.tags["stagetune.status"] == "completed"
    params = parent.data.params
    assert (params["coarse.n_trials"], params["final.max_epochs"], params["refine.n_trials"]) == ("1", "2", "0")
    assert server.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]  # SIGTERM: a clean stop


@pytest.mark.integration
@pytest.mark.slow
def test_prefect_deploy_registers_the_prefect_yaml_deployment(prefect_api: str, tmp_path: Path) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    login = {PREFECT_API_URL: prefect_api, PREFECT_API_AUTH_STRING: AUTH_STRING}
    with temporary_settings(login), get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="stagetune-process", type="process"))
    env = subprocess_env(tmp_path, PREFECT_API_URL=prefect_api, PREFECT_API_AUTH_STRING=AUTH_STRING)
    deploy = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    deployment = _read_deployment(prefect_api, "digits-weekly")
    assert [s.schedule.cron for s in deployment.schedules] == [CRON]
    assert deployment.work_pool_name == "stagetune-process"
    assert deployment.entrypoint == "flows/deployment.py:tune_deployment"
    assert PipelineConfig.model_validate(deployment.parameters["config"]) == load_config(DIGITS)
    # The worker's flow runs start in the directory `prefect deploy` ran in: the repository root.
    assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    assert os.path.isfile(REPO / deployment.entrypoint.split(":")[0])
