"""`stagetune run`'s start-up order: Prefect's server child starts once the config passes its schema, before the
checks against this machine, and a refusal stops it before `run` returns. A stand-in server: no process starts."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from stagetune import cli

runner = CliRunner()


class FakeServer:
    """Records what `run` does with its early API server."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        events.append("server started")

    def wait(self) -> None:
        self.events.append("server waited for")

    def stop(self) -> None:
        self.events.append("server stopped")


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(cli, "start_api_server_early", lambda: FakeServer(seen))
    checked = cli.check_environment

    def check_environment(settings: object) -> None:
        seen.append("environment checked")
        checked(settings)  # type: ignore[arg-type]

    monkeypatch.setattr(cli, "check_environment", check_environment)
    return seen


def test_a_config_refused_by_its_schema_exits_2_without_starting_a_server(events: list[str], tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["run", "--set", f"execution.workdir={tmp_path}", "--set", "coarse.n_trials=-1"])

    assert result.exit_code == 2, result.output
    assert "coarse.n_trials" in result.output
    assert events == []


def test_a_config_refused_by_this_machine_stops_the_server_it_started(events: list[str], tmp_path: Path) -> None:
    args = ["--set", f"execution.workdir={tmp_path}", "--set", "model.family=custom"]
    args += ["--set", "model.import_path=tests.no_such_module:factory"]
    result = runner.invoke(cli.app, ["run", *args])

    assert result.exit_code == 2, result.output
    assert "model.import_path" in result.output
    # The server's start overlapped the check (torch's import); the refusal stopped it, before any flow.
    assert events == ["server started", "environment checked", "server stopped"]
