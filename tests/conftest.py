"""Shared fixtures: tiny CPU configs, one Prefect test server per session, isolated stores.

The suite runs on two pytest-xdist workers (`addopts` in pyproject.toml). Each worker is its own
session: its own Prefect test server, temporary folders (per-worker basetemp), stacks on free ports
and PostgreSQL databases with random names. Tests that share a module- or session-scoped fixture
are sent to one worker together (see `pytest_collection_modifyitems`) so that fixture is made once.

Markers: `slow` for end-to-end runs (seconds each), `integration` for every test that uses a real server
(Prefect's API, SeaweedFS, an MLflow server, PostgreSQL, `mlflow models serve`, Chromium). A fixture
that starts or connects to one is decorated with `uses_a_server`; a test that uses such a fixture
without the `integration` marker fails at set-up, before the server starts (`pytest_runtest_setup`),
so `-m "not slow and not integration"` (the fast lane, README) never starts a server.

Temporary folders are in memory (/dev/shm) when the machine has one with room and TMPDIR is not set:
see tests/memory_temp.py.
"""

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from schemas.config import PipelineConfig
from stagetune.config_loading import load_config
from stagetune.prefect_startup import without_flow_heartbeats
from stagetune.runtime import QUIET_DEFAULTS
from tests.memory_temp import use_memory_temp
from tests.mlflow_template import template_mlflow_stores

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


FixtureFunction = TypeVar("FixtureFunction", bound=Callable[..., Any])


def uses_a_server(function: FixtureFunction) -> FixtureFunction:
    """Mark a fixture function (below `@pytest.fixture`) as starting or using a real server: the tests
    that use it must carry the `integration` marker."""
    function.stagetune_uses_a_server = True  # type: ignore[attr-defined]
    return function


def server_fixtures(item: pytest.Item) -> list[str]:
    """The fixtures of `item` (its own and those they depend on) that start or use a real server."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    return [
        name
        for name in sorted(getattr(item, "fixturenames", ()))
        if any(getattr(d.func, "stagetune_uses_a_server", False) for d in info.name2fixturedefs.get(name, ()))
    ]


def pytest_configure(config: pytest.Config) -> None:
    """Temporary folders in memory where the machine has room (tests/memory_temp.py): each SQLite commit
    of the stores under test then skips the disk's fsync. Before xdist starts its workers, which inherit it."""
    use_memory_temp()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a test that uses a server fixture without the `integration` marker, before the fixture runs."""
    servers = server_fixtures(item)
    if servers and item.get_closest_marker("integration") is None:
        pytest.fail(
            f"{item.nodeid} uses {', '.join(servers)}, which start(s) or use(s) a real server: mark the test "
            "`@pytest.mark.integration` (or its module: `pytestmark`) so the fast lane leaves it out",
            pytrace=False,
        )


# Shared fixtures that are cheap to make on each worker: sharing only these does not tie tests together.
PER_WORKER_FIXTURES = frozenset(
    {
        "_quiet_third_parties",
        "_torch_threads_shared_between_workers",
        "_mlflow_stores_from_a_template",
        "prefect_server",
        "scratch",
        "cases_root",
    }
)


@pytest.hookimpl(tryfirst=True)  # before xdist turns the `xdist_group` marks into work units
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `--dist loadgroup`, give tests that share a costly module/session fixture one xdist group,
    and hand out the groups with the most `slow` tests first (`--no-loadscope-reorder` keeps this order)."""
    if not getattr(config.option, "loadgroup", False):  # set on xdist workers by `--dist loadgroup`
        return
    groups = shared_fixture_groups(items)
    for item, group in zip(items, groups, strict=True):
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    items[:] = heaviest_first(items, groups)


def heaviest_first(items: Sequence[pytest.Item], groups: Sequence[str | None]) -> list[pytest.Item]:
    """`items` with each work unit (an xdist group, or one ungrouped test) kept together, the units ordered
    by their number of `slow` tests, most first; ties in collection order.

    The two workers take units in this order, so the long end-to-end tests start early and the ~750 fast
    tests come last, filling in whichever worker finishes its long tests first: neither waits long for
    the other at the end. (xdist's own order, by number of tests per unit, sent the slow ungrouped tests
    last, in file order: a worker could run its last pipeline test alone while the other sat idle.)
    """
    units: dict[str, list[pytest.Item]] = {}
    for item, group in zip(items, groups, strict=True):
        units.setdefault(group or item.nodeid, []).append(item)
    ordered = sorted(
        units.values(), key=lambda unit: -sum(item.get_closest_marker("slow") is not None for item in unit)
    )
    return [item for unit in ordered for item in unit]


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Say so when xdist dropped the groups (pytest-xdist#1386: pytest 9.2 ignores its node-id suffix)."""
    if getattr(session.config.option, "loadgroup", False):
        grouped = [item for item in session.items if item.get_closest_marker("xdist_group")]
        if grouped and "@" not in grouped[0].nodeid:
            warnings.warn(
                "pytest-xdist ignored the xdist_group marks: shared fixtures are made on every worker",
                pytest.PytestWarning,
                stacklevel=1,
            )


def shared_fixture_groups(items: Sequence[pytest.Item]) -> list[str | None]:
    """For each item, the name of its group of items linked by shared fixture instances (None: unlinked)."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    keys_of = [_shared_fixture_keys(item) for item in items]
    for keys in keys_of:
        for key in keys[1:]:
            first, other = root(keys[0]), root(key)
            parent[max(first, other)] = min(first, other)  # the smallest key names the group
    return [root(keys[0]) if keys else None for keys in keys_of]


def _shared_fixture_keys(item: pytest.Item) -> list[str]:
    """One key per instance of a module/session fixture of this test suite that `item` uses."""
    info = getattr(item, "_fixtureinfo", None)
    keys = []
    for name in sorted(getattr(item, "fixturenames", ())):
        definitions = info.name2fixturedefs.get(name) if info is not None else None
        if not definitions or name in PER_WORKER_FIXTURES:
            continue
        definition = definitions[-1]
        if definition.scope == "function" or not definition.func.__module__.startswith("tests."):
            continue
        # Named by the fixture, not by where it is visible: a fixture imported into two modules is one.
        if definition.scope in ("module", "class") and isinstance(item, pytest.Function):
            keys.append(f"{name}:{item.module.__name__.rpartition('.')[2]}")  # one instance per module
        else:
            keys.append(name)
    return keys


@pytest.fixture(scope="session", autouse=True)
def _quiet_third_parties() -> None:
    for key, value in QUIET_DEFAULTS.items():
        os.environ.setdefault(key, value)


@pytest.fixture(scope="session", autouse=True)
def _torch_threads_shared_between_workers() -> None:
    """Under xdist, each worker's torch (and its CLI children's, through OMP_NUM_THREADS) gets its share of
    the cores, as a run at `execution.concurrency` = the worker count would: torch's default (every core
    in every worker) had the workers' threads contend. A tiny pipeline run on a 2-core machine (load ~9,
    one process, 2 pairs): 9.4-9.9 s of CPU on 2 threads, 7.1-7.3 s on 1 (2026-12-06)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1 or "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    threads = max(1, (os.cpu_count() or 1) // workers)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


@pytest.fixture(scope="session", autouse=True)
def _mlflow_stores_from_a_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """New local MLflow stores of this process are copied from the first, not migrated again
    (~1.5 s of CPU each; tests/mlflow_template.py)."""
    with template_mlflow_stores(tmp_path_factory.mktemp("mlflow-template")):
        yield


# A run against a stack puts the stack's logins into the process environment (export_client_settings),
# where MLflow's and Prefect's clients read them; in a test process they must not outlive the test.
CLIENT_LOGIN_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING")


@pytest.fixture(autouse=True)
def _client_logins_do_not_leak() -> Iterator[None]:
    before = {name: os.environ.get(name) for name in CLIENT_LOGIN_VARIABLES}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
@uses_a_server
def prefect_server() -> Iterator[str]:
    """One temporary Prefect API (and database) for every flow run of the session; yields its URL. Its flow
    runs send no heartbeats, as `stagetune run`'s on its own temporary server (each run's end would wait
    for the heartbeat thread, up to a second)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120), without_flow_heartbeats():
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
