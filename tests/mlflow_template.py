"""New local MLflow stores of a test process copied from the first one MLflow built, not migrated again.

MLflow builds a new SQLite store by running its whole chain of schema migrations: ~1.5 s of CPU per
store on the CI machine, paid by every test that writes to a fresh workdir (most end-to-end tests).
Here the first store of the process is built by MLflow itself; its database, as it stands right after
MLflow's table set-up (no experiment in it yet), becomes the template that every later new store of
the process is filled from (SQLite's backup API, into the connection MLflow just opened). The file
appears when and where MLflow would create it and holds what MLflow's own set-up would have written:
same tables, same schema revision, still empty. Child processes (CLI runs) and servers are untouched.
"""

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


class TemplateStores:
    """A replacement for MLflow's `_initialize_tables(engine)` that copies a template into new SQLite stores."""

    def __init__(self, template: Path, initialize_tables: Callable[[Any], None]) -> None:
        self.template = template
        self.initialize_tables = initialize_tables  # MLflow's own
        self.lock = threading.Lock()
        self.copied = 0

    def __call__(self, engine: Any) -> None:
        if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
            self.initialize_tables(engine)
            return
        raw = engine.raw_connection()
        try:
            database = raw.driver_connection
            with self.lock:
                if not self.template.exists():
                    self.initialize_tables(engine)  # MLflow builds this store; it becomes the template
                    with sqlite3.connect(self.template) as template:
                        database.backup(template)
                    return
                with sqlite3.connect(self.template) as template:
                    template.backup(database)
                self.copied += 1
        finally:
            raw.close()


@contextmanager
def template_mlflow_stores(folder: Path) -> Iterator[TemplateStores]:
    """Within the block, new SQLite MLflow stores of this process are copies of one built by MLflow."""
    import mlflow.store.db.utils as db_utils
    import mlflow.store.model_registry.sqlalchemy_store as registry_store

    # Both MLflow stores (tracking, model registry) call `_initialize_tables` on a database without tables;
    # the registry store holds its own reference. A renamed function fails here, loudly.
    stores = TemplateStores(folder / "mlflow-template.db", db_utils._initialize_tables)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(db_utils, "_initialize_tables", stores)
        patch.setattr(registry_store, "_initialize_tables", stores)
        yield stores
