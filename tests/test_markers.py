"""The markers hold: a test that uses a real server carries `integration`, so the fast lane starts none."""

from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import pytest_runtest_setup, server_fixtures, uses_a_server


def _item(fixtures: dict[str, tuple[Any, ...]], *, integration: bool) -> Any:
    """A stand-in for a collected test: its fixture closure and the definitions pytest found for each."""
    marker = pytest.mark.integration.mark if integration else None
    return SimpleNamespace(
        nodeid="tests/test_x.py::test_x",
        fixturenames=list(fixtures),
        _fixtureinfo=SimpleNamespace(name2fixturedefs=fixtures),
        get_closest_marker=lambda name: marker if name == "integration" else None,
    )


def _server() -> None:
    """A fixture body that would start a server."""


SERVER = SimpleNamespace(func=uses_a_server(_server))
PLAIN = SimpleNamespace(func=lambda: None)


def test_a_server_fixture_is_found_among_the_tests_fixtures_even_behind_an_override() -> None:
    # A fixture overriding a server fixture of the same name (and using it) still starts the server.
    item = _item({"tmp_path": (PLAIN,), "stack": (SERVER, PLAIN), "workdir": (PLAIN,)}, integration=True)
    assert server_fixtures(item) == ["stack"]
    assert server_fixtures(_item({"tmp_path": (PLAIN,)}, integration=False)) == []


def test_a_test_using_a_server_without_the_integration_marker_fails_at_set_up() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"uses stack, which .* mark the test `@pytest.mark.integration`"):
        pytest_runtest_setup(_item({"stack": (SERVER,)}, integration=False))
    pytest_runtest_setup(_item({"stack": (SERVER,)}, integration=True))  # marked: nothing to say
    pytest_runtest_setup(_item({"tmp_path": (PLAIN,)}, integration=False))  # no server: nothing to say


def test_every_collected_test_that_uses_a_server_fixture_is_marked_integration(request: pytest.FixtureRequest) -> None:
    unmarked = [
        item.nodeid
        for item in request.session.items
        if server_fixtures(item) and item.get_closest_marker("integration") is None
    ]
    assert unmarked == []
