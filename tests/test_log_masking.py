"""Secrets are masked in every log line (stagetune's, Prefect's, MLflow's) and never logged as MLflow params."""

import io
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from schemas.hyperparams import HyperParams
from stagetune.models.mlp import MLP
from stagetune.runtime import configure_process
from stagetune.secret_masking import (
    MASK,
    MaskingRecordFactory,
    SecretMaskingFilter,
    install_log_masking,
    known_secrets,
)
from tests.conftest import tiny_config

SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
DB_PASSWORD = "hunter2-db-pass"
TOKEN = "tok-9f8e7d6c5b4a"
SECRETS = (SECRET_KEY, ACCESS_KEY, DB_PASSWORD, TOKEN)


@pytest.fixture
def secret_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[SecretMaskingFilter]:
    """S3 keys, a password inside a URL setting and a token in the environment; masking installed the CLI's way."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("STAGETUNE_OPTUNA_STORAGE", f"postgresql+psycopg://tuner:{DB_PASSWORD}@db.internal:5432/optuna")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
    original = logging.getLogRecordFactory()
    configure_process()
    yield install_log_masking()  # the filter configure_process installed, with the secrets it found
    install_log_masking(secrets=())
    logging.setLogRecordFactory(original)


def captured(logger: logging.Logger) -> tuple[io.StringIO, logging.Handler]:
    """A plain handler added *after* masking was installed (as Prefect adds its own when imported)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return stream, handler


@pytest.mark.parametrize("name", ["stagetune.stages.trial", "prefect.client", "prefect.engine", "mlflow.tracking"])
def test_a_secret_in_any_logger_is_written_masked(secret_environment: SecretMaskingFilter, name: str) -> None:
    import mlflow  # noqa: F401 - Prefect and MLflow set up their own loggers and handlers when imported
    import prefect  # noqa: F401

    logger = logging.getLogger(name)
    stream, handler = captured(logger)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        logger.warning("connecting to %s with key %s", os.environ["STAGETUNE_OPTUNA_STORAGE"], SECRET_KEY)
        logger.info(f"token={TOKEN} id={ACCESS_KEY}")
        logger.error("mapping args: %(key)s", {"key": SECRET_KEY})
        try:
            raise ConnectionError(f"cannot reach postgresql://tuner:{DB_PASSWORD}@db.internal/optuna")
        except ConnectionError:
            logger.exception("storage failed")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    text = stream.getvalue()
    assert text.count(MASK) >= 6, text
    assert "storage failed" in text
    assert "ConnectionError: cannot reach postgresql://tuner:***@db.internal/optuna" in text
    for secret in SECRETS:
        assert secret not in text


def test_handlers_present_at_install_time_mask_records_made_without_the_factory(
    secret_environment: SecretMaskingFilter,
) -> None:
    logger = logging.getLogger("stagetune.listener")
    stream, handler = captured(logger)
    try:
        install_log_masking()
        assert secret_environment in handler.filters
        # A record rebuilt from a dict (as a queue or socket listener does) gets its message after the factory ran.
        handler.handle(
            logging.makeLogRecord({"name": "x", "levelname": "INFO", "msg": "key %s", "args": (SECRET_KEY,)})
        )
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == f"x INFO key {MASK}\n"


def test_installing_again_refreshes_the_secrets_without_nesting_factories(
    secret_environment: SecretMaskingFilter,
) -> None:
    assert isinstance(logging.getLogRecordFactory(), MaskingRecordFactory)
    assert {SECRET_KEY, ACCESS_KEY, DB_PASSWORD, TOKEN} <= set(secret_environment.secrets)
    factory = logging.getLogRecordFactory()
    install_log_masking(["another-secret"])
    assert logging.getLogRecordFactory() is factory
    assert isinstance(factory, MaskingRecordFactory)
    assert not isinstance(factory.wrapped, MaskingRecordFactory)
    record = logging.getLogger("stagetune").makeRecord("stagetune", logging.INFO, "f", 1, "%s", (SECRET_KEY,), None)
    assert record.getMessage() == SECRET_KEY  # only the secrets of the latest install are masked


def test_known_secrets_come_from_settings_urls_and_secret_named_variables() -> None:
    environ = {
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "MLFLOW_TRACKING_URI": f"https://alice:{DB_PASSWORD}@mlflow.example:5000",
        "PGPASSWORD": "pg-password-1",
        "TOKENIZERS_PARALLELISM": "false",
        "HOME": "/root",
    }
    found = known_secrets(environ)
    assert set(found) == {SECRET_KEY, DB_PASSWORD, "pg-password-1"}
    assert found[0] == SECRET_KEY  # longest first
    # Malformed settings are reported by the command; masking still covers the variables it can read.
    assert set(known_secrets({**environ, "STAGETUNE_S3_ENDPOINT_URL": "nonsense"})) == set(found)


def leaky_mlp(hp: HyperParams, input_shape: Sequence[int], num_classes: int) -> MLP:
    """A custom-family factory that logs connection details, as user code debugging a run would."""
    from prefect.logging import get_run_logger

    database = os.environ["DATABASE_URL"]
    logging.getLogger("stagetune.user_model").warning("building with %s and %s", database, SECRET_KEY)
    get_run_logger().warning(f"user model: database {database}, key {os.environ['AWS_SECRET_ACCESS_KEY']}")
    return MLP(hp, int(torch.tensor(input_shape).prod()), num_classes)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_pipeline_run_logs_no_secret_to_mlflow_or_prefect(
    secret_environment: SecretMaskingFilter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    from flows.tune_pipeline import tune_pipeline

    # The studies stay local; the password-bearing URL only sits in the environment for user code to log.
    monkeypatch.setenv("STAGETUNE_OPTUNA_STORAGE", f"sqlite:///{tmp_path / 'optuna.db'}")
    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://tuner:{DB_PASSWORD}@db.internal:5432/app")
    install_log_masking()
    stream, handler = captured(logging.getLogger())
    config = tiny_config(
        tmp_path,
        "model.family=custom",
        "model.import_path=tests.test_log_masking:leaky_mlp",
        "sanity.enabled=false",
        "coarse.n_trials=2",
        "refine.n_trials=1",
        "refine.warm_start=1",
        "refine.narrowing.top_k=1",
    )
    try:
        state = tune_pipeline(config, return_state=True)
    finally:
        logging.getLogger().removeHandler(handler)
    result = state.result()
    assert result.status == "completed", result.message
    APILogWorker.drain_all(timeout=30)
    with get_client(sync_client=True) as client:
        flow_run = LogFilterFlowRunId(any_=[state.state_details.flow_run_id])
        prefect_logs = [log.message for log in client.read_logs(log_filter=LogFilter(flow_run_id=flow_run))]
    assert any(f"user model: database postgresql+psycopg://tuner:{MASK}@" in line for line in prefect_logs), (
        prefect_logs
    )
    assert f"building with postgresql+psycopg://tuner:{MASK}@" in stream.getvalue()

    mlflow = MlflowClient(result.tracking_uri)
    runs = mlflow.search_runs([result.mlflow_experiment_id], max_results=1000)
    assert len(runs) > 5
    values = [f"{k}={v}" for run in runs for k, v in {**run.data.params, **run.data.tags}.items()]
    values.append(mlflow.download_artifacts(result.mlflow_parent_run_id, "config/pipeline_config.json", str(tmp_path)))
    values[-1] = Path(values[-1]).read_text(encoding="utf-8")
    everything = "\n".join([*values, *prefect_logs, stream.getvalue()])
    for secret in SECRETS:
        assert secret not in everything
