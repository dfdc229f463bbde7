"""A new SQLite study database appears whole: a process killed while Optuna creates its schema leaves
no half-made database behind (one without the unique index on study names allowed duplicate studies)."""

import sqlite3
from pathlib import Path

import optuna
import pytest

from stagetune.search import study as study_module
from stagetune.search.study import open_storage


def _indexes(database: Path) -> set[str]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("select name from sqlite_master where type = 'index' and tbl_name = 'studies'")
        return {name for (name,) in rows}


def test_a_process_killed_while_creating_the_schema_leaves_no_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "optuna.db"

    def killed(source: object, target: object) -> None:
        raise RuntimeError("killed")  # as if the process died before the finished schema was moved in

    monkeypatch.setattr(study_module.os, "replace", killed)
    with pytest.raises(RuntimeError, match="killed"):
        open_storage(f"sqlite:///{database}")
    monkeypatch.undo()
    assert not database.exists()

    storage = open_storage(f"sqlite:///{database}", None)  # the next attempt (another cache key)
    assert "ix_studies_study_name" in _indexes(database)
    optuna.create_study(study_name="s", storage=storage)
    again = optuna.create_study(study_name="s", storage=storage, load_if_exists=True)
    assert len(optuna.get_all_study_names(storage)) == 1
    assert again.study_name == "s"
    assert not list(tmp_path.glob(".optuna.db.*"))  # the side file was moved, not left
