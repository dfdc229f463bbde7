"""Content fingerprints: the same data and settings give the same sha256 in any process, on any day."""

import hashlib
import json
from collections.abc import Mapping

import numpy as np
import pandas as pd

from schemas.config import DataConfig, SampleConfig

PREPARATION_VERSION = 1
"""Bump when loading, preprocessing or sampling changes what the stored arrays hold."""


def frame_content_hash(frame: pd.DataFrame) -> str:
    """sha256 of a table's column names, dtypes and values (row order matters, the index does not)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode())
    # hash_pandas_object uses a fixed key, unlike Python's hash(), so the result is stable across processes.
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def dataset_fingerprint(content_hash: str, data: DataConfig, sample: SampleConfig, seed: int) -> str:
    """sha256 of the raw table's content hash and every setting that changes the stage's arrays.

    The rebalancing strategy is left out on purpose: it is applied per training run, not stored.
    """
    settings = {
        "version": PREPARATION_VERSION,
        "content": content_hash,
        "data": data.model_dump(mode="json", exclude={"source"}),  # the content hash covers what it names
        "sample": sample.model_dump(mode="json", include={"fraction", "max_rows", "classes"}),
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def arrays_fingerprint(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 of named arrays' names, dtypes, shapes and bytes, in the mapping's order."""
    digest = hashlib.sha256()
    for name, array in arrays.items():
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
