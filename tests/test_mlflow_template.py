"""The test processes' MLflow stores copied from a template (tests/mlflow_template.py) are MLflow's own stores."""

import sqlite3
from pathlib import Path

import mlflow.store.db.utils as db_utils
import sqlalchemy
from mlflow.tracking import MlflowClient

from tests.mlflow_template import TemplateStores


def _schema(database: Path) -> tuple[list[tuple[str, str, list[str]]], list[tuple[str, ...]]]:
    """Every table, index and trigger with its definition's clauses as a sorted list: MLflow's migrations
    rebuild some tables with their constraints in an order that changes from one process to the next
    (seen in CI: the same CHECK clauses of `runs`, listed in another order), so the text itself is not compared."""
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()
        revision = connection.execute("SELECT * FROM alembic_version").fetchall()
    return [(kind, name, sorted(part.strip() for part in (sql or "").split(","))) for kind, name, sql in rows], revision


def test_a_new_store_has_mlflow_s_schema_and_takes_runs_models_and_artifacts(tmp_path: Path) -> None:
    stores = db_utils._initialize_tables
    assert isinstance(stores, TemplateStores)  # the session's shim is in place
    MlflowClient(f"sqlite:///{tmp_path / 'first.db'}").search_experiments()  # the template exists after this
    copied = stores.copied

    client = MlflowClient(f"sqlite:///{tmp_path / 'copied.db'}")
    experiment_id = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment_id).info.run_id
    client.log_metric(run_id, "loss", 0.5)
    client.log_text(run_id, "hello", "note.txt")
    client.set_terminated(run_id)
    client.create_registered_model("m")
    client.create_model_version("m", f"runs:/{run_id}/model", run_id)
    assert stores.copied == copied + 1

    assert client.get_run(run_id).data.metrics == {"loss": 0.5}
    assert client.download_artifacts(run_id, "note.txt", str(tmp_path)).endswith("note.txt")
    # MLflow made its default one (listed by update time: both can fall in the same millisecond)
    assert sorted(e.name for e in client.search_experiments()) == ["Default", "e"]
    assert client.get_model_version("m", "1").run_id == run_id

    # The same tables, indexes and schema revision as a store MLflow builds itself.
    reference = tmp_path / "reference.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{reference}")
    stores.initialize_tables(engine)
    engine.dispose()
    empty = tmp_path / "empty.db"
    MlflowClient(f"sqlite:///{empty}").search_experiments()
    assert _schema(empty) == _schema(reference)
