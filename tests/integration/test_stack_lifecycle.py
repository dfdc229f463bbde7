"""`stagetune stack up | status | down` through the command layer: idempotent, self-healing, clean stop."""

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stagetune.cli_stack import stack_app
from stagetune.stack import StackPaths, read_auth, read_record, stack_down
from stagetune.stack.procs import free_port, free_ports
from stagetune.stack.services import seaweed_sockets
from tests.integration.helpers import processes_in

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _stack(state: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(stack_app, [*args, "--state-dir", str(state)])
    return result.exit_code, result.stdout, result.stderr


def _pids(paths: StackPaths) -> dict[str, int]:
    return {name: record.pid for name in ("seaweed", "mlflow", "prefect") if (record := read_record(paths, name))}


def _wait_gone(pid: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]:
            return
        time.sleep(0.05)


def test_up_twice_restart_a_dead_service_then_down_leaves_nothing(scratch: Path) -> None:
    state = scratch / "lifecycle"
    paths = StackPaths(state)
    try:
        _lifecycle(state, paths)
    finally:
        stack_down(paths)  # a no-op when the test got to its own `down`


def _lifecycle(state: Path, paths: StackPaths) -> None:
    s3, mlflow, prefect, other = (str(port) for port in free_ports(4))
    ports = ["--s3-port", s3, "--mlflow-port", mlflow, "--prefect-port", prefect]
    started = time.monotonic()
    code, out, err = _stack(state, "up", *ports, "--prefect")
    up_seconds = time.monotonic() - started
    assert code == 0, err
    assert out == f"export STAGETUNE_SETTINGS_FILE={state / 'stack.env'}\n"
    first = _pids(paths)
    assert set(first) == {"seaweed", "mlflow", "prefect"}
    processes = processes_in(state)
    assert set(first.values()) <= processes

    code, out, err = _stack(state, "up")  # again, no options: keeps everything, same ports
    assert code == 0, err
    assert "already running" in err
    assert _pids(paths) == first
    assert processes_in(state) == processes  # no duplicates

    code, out, _ = _stack(state, "status")
    assert code == 0
    assert out.count("healthy") == 3
    assert "auth: basic-auth, user stagetune" in out
    auth = read_auth(paths)
    assert auth is not None
    assert not [secret for secret in auth.values() if secret in out + err]  # neither `up` nor `status` shows one
    for change in (["--bucket", "elsewhere"], ["--mlflow-port", other]):
        code, _, err = _stack(state, "up", *change)
        assert code == 2
        assert "run `stagetune stack down` first" in err
    assert _pids(paths) == first

    killed = read_record(paths, "seaweed")
    assert killed is not None
    os.kill(first["seaweed"], signal.SIGKILL)
    _wait_gone(first["seaweed"])
    code, out, _ = _stack(state, "status")
    assert code == 1
    assert "seaweed  dead" in out
    code, _, err = _stack(state, "up")
    assert code == 0, err
    healed = _pids(paths)
    assert [path.name for path in seaweed_sockets(killed) if path.exists()] == []  # the killed one's /tmp sockets
    assert healed["seaweed"] != first["seaweed"]
    assert {k: v for k, v in healed.items() if k != "seaweed"} == {k: v for k, v in first.items() if k != "seaweed"}

    seaweed = read_record(paths, "seaweed")
    assert seaweed is not None
    sockets = seaweed_sockets(seaweed)
    assert any(path.exists() for path in sockets)
    started = time.monotonic()
    code, _, err = _stack(state, "down")
    down_seconds = time.monotonic() - started
    assert code == 0, err
    assert processes_in(state) == set()
    assert not any(paths.pids.iterdir())
    assert not paths.env_file.exists()
    assert [path.name for path in sockets if path.exists()] == []
    assert _stack(state, "status")[1].count("stopped") == 3
    print(f"stack up (with Prefect) {up_seconds:.1f} s, down {down_seconds:.1f} s")


def test_a_port_taken_by_another_program_fails_clearly_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        s3_port = str(free_port({port}))
        code, out, err = _stack(tmp_path / "state", "up", "--s3-port", s3_port, "--mlflow-port", str(port))
    assert code == 2
    assert out == ""
    assert f"--mlflow-port: port {port} on 127.0.0.1 is already in use by another program" in err
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--bucket", "Bad_Bucket"], "--bucket"),
        (["--backend-store-uri", "redis://127.0.0.1:6379/0"], "--backend-store-uri"),
        (["--optuna-storage", "mongodb://x"], "--optuna-storage"),
        (["--mlflow-port", "80"], "--mlflow-port"),
    ],
)
def test_bad_options_exit_2_naming_the_option(tmp_path: Path, args: list[str], field: str) -> None:
    code, _, err = _stack(tmp_path / "state", "up", *args)
    assert code == 2
    assert f"error in {field}:" in err
    assert "Traceback" not in err
    assert not (tmp_path / "state").exists()
