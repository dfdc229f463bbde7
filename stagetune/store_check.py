"""Before a run starts: can it write where it will write? Local stores are probed, nothing is left behind.

Without the probe, a read-only tracking database is found out only by MLflow's engine creation,
retried for minutes, then reported as a raw SQLAlchemy error after the data stage has run. Here each local
place a run writes to (the workdir, a SQLite MLflow or Optuna database or an Optuna journal and the folder beside it,
a local artifact folder) is probed with a write that is rolled back or removed, so a read-only
file, folder or mount, or a full disk, is refused in well under a second with exit code 2, before
any run folder or MLflow run exists. Server stores (http(s), PostgreSQL, MySQL) cannot be probed
without writing to them: a permanent fault there stops the run at its first write, with one
clear paragraph (`stagetune.tracking.io_retry`).
"""

import errno
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from schemas.config import PipelineConfig
from schemas.urls import default_storage_url, journal_path
from stagetune.errors import InputError
from stagetune.settings import load_settings

if TYPE_CHECKING:
    from stagetune.stages.pipeline_run import TrackingTarget

MIN_FREE_BYTES = 16 * 2**20
"""Less free space than this where a store lives: the first trials would fail with "disk full"."""


def check_stores_writable(config: PipelineConfig) -> "TrackingTarget":
    """Raise `InputError` (naming the setting) if a local place this run writes to cannot be written; return
    where the run's MLflow records go (`resolve_tracking`), checked."""
    from stagetune.stages.pipeline_run import resolve_tracking  # deferred: it imports MLflow

    settings = load_settings()
    workdir = Path(config.execution.workdir).expanduser()
    check_folder_writable(workdir, "execution.workdir", "the workdir (run folders, default stores)")
    target = resolve_tracking(config)
    tracking_field = _source_field(
        config.tracking.uri, "tracking.uri", ("STAGETUNE_TRACKING_URI", "MLFLOW_TRACKING_URI"), settings.tracking_uri
    )
    if target.tracking_uri.startswith("sqlite:///"):
        check_sqlite_writable(target.tracking_uri, tracking_field, "MLflow tracking store")
    if target.artifact_location and target.artifact_location.startswith("file:"):
        artifacts = Path(unquote(urlsplit(target.artifact_location).path))
        check_folder_writable(artifacts, tracking_field, "the MLflow artifact folder")
    # The default Optuna storage as `stagetune.search.study.storage_url` makes it (without creating the workdir).
    storage = config.search.storage or settings.optuna_storage or default_storage_url(workdir)
    field = _source_field(
        config.search.storage, "search.storage", ("STAGETUNE_OPTUNA_STORAGE",), settings.optuna_storage
    )
    journal = journal_path(storage)
    if journal is not None:
        check_journal_writable(journal.expanduser(), storage, field)
    elif storage.startswith("sqlite:///"):
        check_sqlite_writable(storage, field, "Optuna storage")
    return target


def check_journal_writable(journal: Path, uri: str, field: str) -> None:
    """The Optuna journal file can be appended to (it is opened for appending, nothing written), and its folder
    takes new files (its lock file lives beside it; a missing journal is created there)."""
    if journal.is_dir():
        raise InputError(field, f"the Optuna storage {uri} is a folder, not a journal file: name a file in it")
    if journal.exists():
        try:
            with journal.open("ab"):
                pass
        except OSError as error:
            raise InputError(
                field, f"the Optuna storage {uri} cannot be written ({_reason(error)}): {_fix(error)}"
            ) from None
    check_folder_writable(journal.parent, field, f"the folder of the Optuna storage {uri}")


def check_sqlite_writable(uri: str, field: str, what: str) -> None:
    """The SQLite database of `uri` can be written: an existing file takes a write that is rolled back
    (its folder must take the rollback journal too); a missing one's folder must take new files."""
    database = Path(unquote(uri.removeprefix("sqlite:///").split("?", 1)[0])).expanduser()
    if database.is_dir():
        raise InputError(field, f"the {what} {uri} is a folder, not a database file: name a .db file in it")
    folder_use = f"the folder of the {what} {uri}"
    if not database.exists():
        check_folder_writable(database.parent, field, folder_use)
        return
    try:
        connection = sqlite3.connect(f"file:{database}?mode=rw", uri=True, timeout=30)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("CREATE TABLE _stagetune_write_probe (x)")  # a real write, rolled back
            connection.execute("ROLLBACK")
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise InputError(
            field,
            f"the {what} {uri} cannot be written ({error}): give the database file and its folder write "
            "permission for this user (or remount read-write), or point it at a writable location",
        ) from None
    check_folder_writable(database.parent, field, folder_use)  # SQLite writes its rollback journal there


def check_folder_writable(folder: Path, field: str, what: str = "the folder") -> None:
    """`folder` (or, if it does not exist yet, the nearest folder above it) takes a new file and has space.

    `what` names the folder's use in the error, e.g. "the folder of the Optuna storage sqlite:///x.db".
    """
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(
            field, f"{str(existing)!r} is a file, so {str(folder)!r} cannot be a folder: pick another path"
        )
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".stagetune-write-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise InputError(
            field, f"{what} {str(existing)!r} cannot be written ({_reason(error)}): {_fix(error)}"
        ) from None
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise InputError(
            field,
            f"{what} {str(existing)!r} has only {free // 1024} KiB free: free some disk space or use another disk",
        )


def _reason(error: OSError) -> str:
    name = errno.errorcode.get(error.errno or 0, "")
    return f"{name}: {error.strerror}" if name and error.strerror else str(error)


def _fix(error: OSError) -> str:
    if error.errno == errno.EROFS:
        return "it is on a read-only file system: remount it read-write or use a path on a writable disk"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full: free some space or use another disk"
    return "give this user write permission on it, or use a path this user can write"


def _source_field(configured: str | None, setting: str, variables: tuple[str, ...], from_settings: str | None) -> str:
    """The setting or environment variable a store's location came from (the workdir when neither)."""
    if configured:
        return setting
    if from_settings:
        return next((name for name in variables if os.environ.get(name)), f"{variables[-1]} (settings file)")
    return "execution.workdir"
