"""The one atomic file writer: all or nothing, same folder, the permissions asked for."""

import os
import stat
from pathlib import Path

import pytest

from stagetune.atomic_file import atomic_binary_file, write_bytes_atomically, write_text_atomically


def test_text_and_bytes_replace_the_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    write_text_atomically(target, '{"é": 1}')
    assert target.read_text(encoding="utf-8") == '{"é": 1}'
    write_bytes_atomically(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")

    def write_half_then_fail() -> None:
        with atomic_binary_file(target) as stream:
            stream.write(b"half of the new")
            raise RuntimeError("serialiser broke")

    with pytest.raises(RuntimeError, match="serialiser broke"):
        write_half_then_fail()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_the_temporary_file_lives_in_the_target_folder(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_binary_file(target) as stream:
        stream.write(b"new")
        temporaries = [p.name for p in tmp_path.iterdir()]
    assert len(temporaries) == 1
    assert temporaries[0].startswith(".out.bin.")
    assert temporaries[0].endswith(".tmp")
    assert target.read_bytes() == b"new"


def test_permissions_follow_the_umask_unless_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_text_atomically(tmp_path / "public.txt", "x")
        write_text_atomically(tmp_path / "private.env", "KEY=v", private=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "public.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.env").stat().st_mode) == 0o600


def test_fsync_is_done_unless_declined(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(descriptor: int) -> None:
        synced.append(descriptor)
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    write_text_atomically(tmp_path / "a", "x")
    assert len(synced) == 1
    write_text_atomically(tmp_path / "b", "x", fsync=False)
    assert len(synced) == 1
