"""pytest's temporary folders go to memory only where the machine has room and the caller chose nothing."""

import os
from pathlib import Path

import pytest

from tests.memory_temp import use_memory_temp


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("TMPDIR", raising=False)
    monkeypatch.delenv("PYTEST_DEBUG_TEMPROOT", raising=False)
    return monkeypatch


def test_a_writable_memory_folder_becomes_pytest_s_temporary_root(
    tmp_path: Path, clean_environment: pytest.MonkeyPatch
) -> None:
    assert use_memory_temp(tmp_path) == tmp_path
    assert os.environ["PYTEST_DEBUG_TEMPROOT"] == str(tmp_path)
    assert "TMPDIR" not in os.environ


def test_a_chosen_temporary_folder_or_a_missing_memory_folder_changes_nothing(
    tmp_path: Path, clean_environment: pytest.MonkeyPatch
) -> None:
    assert use_memory_temp(tmp_path / "missing") is None
    clean_environment.setenv("TMPDIR", str(tmp_path))
    assert use_memory_temp(tmp_path) is None
    assert "PYTEST_DEBUG_TEMPROOT" not in os.environ


def test_a_memory_folder_short_of_room_changes_nothing(tmp_path: Path, clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setattr("tests.memory_temp.MIN_FREE_BYTES", 2**62)  # more room than any machine has
    assert use_memory_temp(tmp_path) is None
    assert "PYTEST_DEBUG_TEMPROOT" not in os.environ
