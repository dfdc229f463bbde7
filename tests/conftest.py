"""Shared fixtures: tiny CPU configs, one Prefect test server per session, isolated stores."""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.config import PipelineConfig
from stagetune.config_loading import load_config
from stagetune.runtime import QUIET_DEFAULTS

REPO = Path(__file__).resolve().parents[1]

# The whole pipeline on tiny data, CPU, in a few seconds: few rows, short checks, 2 baseline epochs.
TINY_OVERRIDES = (
    "sample.max_rows=300",
    "sanity.overfit_samples=60",
    "sanity.overfit_batch_size=30",
    "sanity.overfit_max_steps=300",
    "sanity.lr_range_steps=30",
    "sanity.baseline_epochs=2",
    "execution.device=cpu",
    "coarse.n_trials=4",
    "coarse.epochs=2",
    "refine.n_trials=4",
    "refine.epochs=3",
    "refine.narrowing.top_k=2",
    "refine.warm_start=2",
    "final.max_epochs=3",
    "tracking.report=false",  # the report tests switch it on
)


@pytest.fixture(scope="session", autouse=True)
def _quiet_third_parties() -> None:
    for key, value in QUIET_DEFAULTS.items():
        os.environ.setdefault(key, value)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """One temporary Prefect API (and database) for every flow run of the session; yields its URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


def tiny_config(workdir: Path, *overrides: str, config_file: Path | None = None) -> PipelineConfig:
    """A config for tests: tiny settings, stores under `workdir`, then `overrides`."""
    return load_config(config_file, [*TINY_OVERRIDES, f"execution.workdir={workdir}", *overrides])


def subprocess_env(tmp_path: Path, **extra: Any) -> dict[str, str]:
    """Environment for running the CLI in a child process: repo importable, own Prefect home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING"))}
    env["PYTHONPATH"] = str(REPO)
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env.update({k: str(v) for k, v in extra.items()})
    return env
