"""Session fixtures: a real stack (SeaweedFS + MLflow server) on loopback, and one pipeline run against it.

Each stack gets a temporary state folder and free ports; it is started with the stack's own
functions and stopped (every process, by PID) when the session ends, or at once if it fails to
start. Folders of long-lived servers live outside pytest's basetemp: a concurrent pytest session's
retention sweep (it keeps the three newest) would delete them under the running servers.
"""

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from schemas.pipeline import PipelineResult
from stagetune.settings import SETTINGS_FILE_VARIABLE
from stagetune.stack import StackInfo, StackOptions, StackPaths, stack_down, stack_up
from stagetune.stack.procs import free_ports
from tests.conftest import tiny_config, uses_a_server
from tests.integration.helpers import FOREIGN_SETTINGS, SMALL


@dataclass(frozen=True)
class PrefectApi:
    """A stack's Prefect API and the auth string it wants."""

    url: str
    auth_string: str = field(repr=False)


@dataclass(frozen=True)
class PipelineRun:
    """One pipeline run against a stack, and what it left behind."""

    stack: StackInfo
    result: PipelineResult
    workdir: Path
    log_records: list[str]


def start_stack(
    state_dir: Path, backend_store_uri: str | None = None, optuna_storage: str | None = None, prefect: bool = False
) -> StackInfo:
    """`stack_up` in `state_dir` on free loopback ports."""
    s3_port, mlflow_port, prefect_port = free_ports(3)
    options = StackOptions(
        s3_port=s3_port,
        mlflow_port=mlflow_port,
        prefect_port=prefect_port if prefect else None,
        prefect=prefect,
        backend_store_uri=backend_store_uri,
        optuna_storage=optuna_storage,
        timeout_s=150,
    )
    try:
        return stack_up(StackPaths(state_dir), options)
    except BaseException:
        stack_down(StackPaths(state_dir))  # whatever did start
        raise


def run_pipeline(stack: StackInfo, workdir: Path, prefect_api: PrefectApi, *overrides: str) -> PipelineRun:
    """The tiny pipeline with only the stack's settings file pointing it at the stack; Python logs captured.

    Flow and task runs go to `prefect_api` (the session stack's `prefect server`). The MLflow login
    comes from the settings file too (the pipeline puts it into the environment; restored after).
    """
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from flows.tune_pipeline import tune_pipeline

    records: list[str] = []
    handler = _ListHandler(records)
    root = logging.getLogger()
    previous_level = root.level
    environ = dict(os.environ)
    prefect = {PREFECT_API_URL: prefect_api.url, PREFECT_API_AUTH_STRING: prefect_api.auth_string}
    with pytest.MonkeyPatch.context() as patch:
        for name in FOREIGN_SETTINGS:
            patch.delenv(name, raising=False)
        patch.setenv(SETTINGS_FILE_VARIABLE, str(stack.paths.env_file))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            with temporary_settings(prefect):
                result = tune_pipeline(tiny_config(workdir, *SMALL, *overrides))
        finally:
            root.removeHandler(handler)
            root.setLevel(previous_level)
            os.environ.clear()
            os.environ.update(environ)
    return PipelineRun(stack, result, workdir, records)


@pytest.fixture(scope="session")
def scratch() -> Iterator[Path]:
    """A folder for the session's stacks and pipeline runs, removed at the end."""
    folder = Path(tempfile.mkdtemp(prefix="stagetune-it-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
@uses_a_server
def stack(scratch: Path) -> Iterator[StackInfo]:
    """SeaweedFS + MLflow (SQLite backend store) + a Prefect server for the whole session."""
    info = start_stack(scratch / "stack", prefect=True)
    yield info
    stack_down(info.paths)


@pytest.fixture(scope="session")
def prefect_api(stack: StackInfo) -> PrefectApi:
    """The session stack's Prefect API URL and auth string."""
    return PrefectApi(stack.settings["PREFECT_API_URL"], stack.settings["PREFECT_API_AUTH_STRING"])


@pytest.fixture(scope="session")
def pipeline_run(stack: StackInfo, prefect_api: str, scratch: Path) -> PipelineRun:
    """The pipeline run once against the session's stack."""
    return run_pipeline(stack, scratch / "pipeline", prefect_api)


class _ListHandler(logging.Handler):
    def __init__(self, records: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}")
