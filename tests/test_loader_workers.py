"""DataLoader workers end quietly: no "worker exited unexpectedly" traceback when a loader is collected."""

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import REPO

# A training process as the CLI has it: a thread-exit hook registered by a service thread (Prefect's
# event and log services do this), then a lazy loader with workers left in the middle of an epoch (as
# the LR range test leaves it) and collected. The hook records any process other than the parent it
# runs in, and fails there as Prefect's does (an AssertionError: exit code 1 for a worker).
SCRIPT = textwrap.dedent(
    """
    import gc, os, sys, threading
    import numpy as np, torch
    from stagetune.data.source import LazyRows, LoadOptions
    from stagetune.training.loaders import LazyBatches

    marker, parent = sys.argv[1], os.getpid()

    def hook():
        if os.getpid() != parent:
            with open(marker, "a") as out:
                out.write(f"{os.getpid()}\\n")
            raise AssertionError("the parent's thread-exit hook ran in a DataLoader worker")

    threading._register_atexit(hook)

    class Reader:
        def __len__(self):
            return 64

        def read(self, index):
            return torch.full((1, 2, 2), float(index))

    rows = LazyRows(Reader(), np.arange(64), (1, 2, 2), LoadOptions(num_workers=2))
    batches = LazyBatches(rows, torch.zeros(64), batch_size=4)
    epoch = iter(batches)
    next(epoch)
    del epoch, batches
    gc.collect()
    print("collected")
    """
)


def test_workers_of_a_collected_loader_exit_cleanly(tmp_path: Path) -> None:
    script = tmp_path / "loader_exit.py"
    script.write_text(SCRIPT)
    marker = tmp_path / "hook_ran_in"
    done = subprocess.run(
        [sys.executable, str(script), str(marker)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "collected" in done.stdout
    assert not marker.exists(), f"the parent's exit hook ran in workers {marker.read_text().split()}"
    assert "exited unexpectedly" not in done.stderr, done.stderr
