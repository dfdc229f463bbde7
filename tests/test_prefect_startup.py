"""Prefect's temporary API server in its own child process: used by the run, gone with it."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import subprocess_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A process that starts the server early, imports Prefect, waits, prints what its Prefect uses, then sleeps.
SCRIPT = """
import json, sys, time
from stagetune.runtime import configure_process
configure_process()
from stagetune.prefect_startup import start_api_server_early
server = start_api_server_early()
from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY
server.wait()
child = server.process.pid if server.process else None
with server.flow_settings():
    heartbeat = PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value()
seen = {"api_url": PREFECT_API_URL.value(), "server_pid": child, "own_url": server.api_url, "spawned": server.port}
seen["heartbeat"] = heartbeat
print(json.dumps(seen), flush=True)
time.sleep(120)
"""


def _start(env: dict[str, str]) -> tuple["subprocess.Popen[str]", dict[str, object]]:
    process = subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, f"the script printed nothing (exit code {process.wait()})"
    return process, json.loads(line)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its dead parent's reaper) counts as gone.
    return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_the_run_uses_a_server_started_in_a_child_that_dies_with_it(tmp_path: Path) -> None:
    process, seen = _start(subprocess_env(tmp_path))
    try:
        server_pid = seen["server_pid"]
        assert isinstance(server_pid, int)
        assert seen["api_url"] == seen["own_url"]  # Prefect in the run points at the child's server
        assert seen["heartbeat"] is None  # its flow runs send none: nothing outlives the run to read them
        with urllib.request.urlopen(f"{seen['api_url']}/health", timeout=5) as response:
            assert response.status == 200
    finally:
        process.send_signal(signal.SIGKILL)  # no atexit: the kernel must stop the server
        process.wait()
    deadline = time.monotonic() + 15
    while _alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(server_pid)


def test_an_api_url_in_the_prefect_profile_is_used_and_no_server_is_kept(tmp_path: Path) -> None:
    env = subprocess_env(tmp_path)
    home = Path(env["PREFECT_HOME"])
    home.mkdir(parents=True)
    profile = 'active = "ci"\n\n[profiles.ci]\nPREFECT_API_URL = "http://127.0.0.1:9/api"\n'
    (home / "profiles.toml").write_text(profile)

    process, seen = _start(env)
    try:
        assert seen["api_url"] == "http://127.0.0.1:9/api"
        assert seen["spawned"] is not None  # Prefect was not imported yet: a child was started on speculation,
        assert seen["server_pid"] is None  # and stopped once Prefect's settings named another API
        assert seen["heartbeat"] == 180  # a server that outlives the run keeps Prefect's heartbeats
    finally:
        process.kill()
        process.wait()


# `stagetune run` refused after the server was started (here: --summary in a missing folder), in-process as
# the tests run commands: the server must be stopped when `run` returns, not when the process exits.
REFUSED = """
import json, os, sys
from typer.testing import CliRunner
from stagetune import cli
started = []
def spy():
    server = cli_start()
    started.append(server.process.pid if server.process else None)
    return server
cli_start, cli.start_api_server_early = cli.start_api_server_early, spy
result = CliRunner().invoke(cli.app, ["run", "--set", "execution.workdir=" + sys.argv[1], "--summary", sys.argv[2]])
alive = [pid for pid in started if pid is not None and os.path.exists(f"/proc/{pid}")]
print(json.dumps({"exit_code": result.exit_code, "started": started, "alive": alive}), flush=True)
"""


def test_a_run_refused_after_the_server_started_stops_it_before_returning(tmp_path: Path) -> None:
    summary = tmp_path / "no" / "such" / "out.json"
    command = [sys.executable, "-c", REFUSED, str(tmp_path / "work"), str(summary)]
    done = subprocess.run(command, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["exit_code"] == 2, done.stderr
    [pid] = seen["started"]
    assert isinstance(pid, int)  # no Prefect API in the environment: a server was started
    assert seen["alive"] == []  # and stopped (and reaped) when `run` refused the input
