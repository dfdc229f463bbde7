"""pytest's temporary folders (`tmp_path`) in memory (/dev/shm) when the machine has one with room.

The end-to-end tests write their stores (MLflow's and Optuna's SQLite databases, run folders, the
Prefect homes of CLI runs) under `tmp_path`. On the CI machine's disk each SQLite commit
waits for an fsync, 8-14 ms; a tiny pipeline run makes ~350 commits on its flow thread alone, 4.1-4.6 s
of waiting (0.05-0.1 s on /dev/shm, measured in one process, 2026-12-06). Nothing in the suite tests
what survives a power cut, which is all that fsync adds; a killed process's writes survive either way.
TMPDIR is left alone: the stack looks for SeaweedFS's sockets through `tempfile.gettempdir()`, and
where SeaweedFS puts them under another TMPDIR was not checked.
"""

import os
import shutil
from pathlib import Path

MEMORY_FOLDER = Path("/dev/shm")
MIN_FREE_BYTES = 4 * 2**30  # a floor, so that the folders never squeeze the machine's memory


def use_memory_temp(memory: Path = MEMORY_FOLDER) -> Path | None:
    """Make `memory` the root of pytest's temporary folders (its PYTEST_DEBUG_TEMPROOT); returns it.

    Leaves everything as it is, and returns None, where TMPDIR or PYTEST_DEBUG_TEMPROOT is set already
    (the caller chose) or `memory` is missing, not writable or short of room.
    """
    if os.environ.get("TMPDIR") or os.environ.get("PYTEST_DEBUG_TEMPROOT"):
        return None
    if not memory.is_dir() or not os.access(memory, os.W_OK | os.X_OK):
        return None
    if shutil.disk_usage(memory).free < MIN_FREE_BYTES:
        return None
    os.environ["PYTEST_DEBUG_TEMPROOT"] = str(memory)  # read when the basetemp is made (xdist: subfolders)
    return memory
