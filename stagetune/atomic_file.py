"""The one atomic file writer: a reader sees the old file or the whole new one, never a part of it.

The bytes go to a temporary file in the target's own folder (a rename is atomic only within one
file system) which then replaces the target with `os.replace`. A write that fails, or a process
killed mid-write, leaves the old file as it was; the temporary file is removed on failure (a kill
leaves a hidden `.<name>.<random>.tmp` beside it, which nothing reads).

`fsync=True` (the default) flushes the data to disk before the rename, so a power cut after it
cannot leave an empty target: for files a resume or a later stage trusts (run state, stage
results, checkpoints, stage data). Files rewritten on the next run anyway may skip it.
"""

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

PRIVATE_MODE = 0o600
"""`private=True`: readable and writable by this user only, from the first byte written."""


@contextmanager
def atomic_binary_file(path: Path, *, fsync: bool = True, private: bool = False) -> Iterator[BinaryIO]:
    """A binary stream whose bytes replace `path` when the block ends without an error.

    For writers that want a stream (`torch.save`, `np.savez`, `DataFrame.to_parquet`). The folder
    must exist. The file gets the permissions a plain `open` would (umask), or 0600 with `private`.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # O_EXCL: a name another writer picked is never shared; the kernel applies the umask to 0o666.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE if private else 0o666)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            yield stream
            stream.flush()
            if fsync:
                os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes_atomically(path: Path, data: bytes, *, fsync: bool = True, private: bool = False) -> None:
    """Replace `path` with `data` atomically (see `atomic_binary_file`)."""
    with atomic_binary_file(path, fsync=fsync, private=private) as stream:
        stream.write(data)


def write_text_atomically(path: Path, text: str, *, fsync: bool = True, private: bool = False) -> None:
    """Replace `path` with `text` (UTF-8) atomically (see `atomic_binary_file`)."""
    write_bytes_atomically(path, text.encode("utf-8"), fsync=fsync, private=private)
