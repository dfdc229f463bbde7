"""The data-source seam: what Stage 1 needs from a source that is read sample by sample, not held in memory.

Two implementations sit behind the stages' one interface (`StageArrays`, `make_train_loader`):

- the in-memory table (`stagetune.data.loading`: builtin data sets, CSV, Parquet): float arrays in one
  npz, batched by indexing tensors (`TensorBatches`);
- indexed sources (image folder, image CSV, py: Dataset factory): Stage 1 works on the list of samples
  and their labels only and stores row indices plus a manifest; training reads the samples lazily
  through a torch `DataLoader` with workers (`LazyRows` -> `LazyBatches`).

A new indexed source is one module with `open_source(cfg) -> IndexedSource` and `reopen(manifest) ->
readers`, registered in `INDEXED_SOURCES` (`stagetune.data.sources`).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset


class SampleReader(Protocol):
    """Reads the input of one sample by position: a float32 tensor of the source's input shape."""

    def __len__(self) -> int: ...

    def read(self, index: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class IndexedSource:
    """What an indexed source gives Stage 1: readers per part, the labels of every sample, and a manifest.

    `parts` is {"all": reader} when stagetune splits, or {"train", "val", "test"} when the source comes
    split. Labels are int64 codes over `class_names` (classification) or float64 (n, k) (regression).
    """

    kind: str
    parts: Mapping[str, SampleReader]
    labels: Mapping[str, np.ndarray]
    task: str
    task_reason: str
    class_names: tuple[str, ...]
    target_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    content_hash: str
    manifest: dict[str, Any]
    """JSON-able: enough for `reopen` to rebuild the readers in a later stage or process."""
    normalise: bool = False
    """Images: measure per-channel mean/std on the training split and standardise with them."""
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadOptions:
    """How lazily read samples are loaded: DataLoader worker processes, and pinned memory (CUDA)."""

    num_workers: int = 0
    pin_memory: bool = False


@dataclass(frozen=True)
class LazyRows:
    """Some rows of a reader, read only when a loader asks: the lazy counterpart of a feature array.

    Indexing with positions gives another `LazyRows` (nothing is read); `materialise` reads them.
    """

    reader: SampleReader
    rows: np.ndarray
    input_shape: tuple[int, ...]
    options: LoadOptions = field(default_factory=LoadOptions)
    identity: str = ""
    """A fingerprint of the source and part the rows index (for the test-split fingerprint)."""

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions: np.ndarray | slice) -> "LazyRows":
        return replace(self, rows=self.rows[positions])

    @property
    def shape(self) -> tuple[int, ...]:
        """(rows, *input_shape), as an array of these rows would have."""
        return (len(self.rows), *self.input_shape)

    def materialise(self) -> np.ndarray:
        """Read every row now (for small subsets only: the sanity gate's few hundred rows)."""
        if len(self.rows) == 0:
            return np.empty((0, *self.input_shape), dtype=np.float32)
        return torch.stack([self.reader.read(int(i)) for i in self.rows]).numpy()

    def dataset(self, targets: torch.Tensor, rows: np.ndarray | None = None) -> "RowsDataset":
        """A map-style Dataset of (input, target) over these rows (or over `rows`, positions into them)."""
        picked = self.rows if rows is None else self.rows[rows]
        return RowsDataset(self.reader, picked, targets if rows is None else targets[torch.as_tensor(rows)])


class RowsDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(reader.read(rows[i]), targets[i]): the sample read from the source, the target from Stage 1's labels."""

    def __init__(self, reader: SampleReader, rows: np.ndarray, targets: torch.Tensor) -> None:
        if len(rows) != len(targets):
            raise ValueError(f"{len(rows)} rows but {len(targets)} targets")
        self.reader, self.rows, self.targets = reader, rows, targets

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.reader.read(int(self.rows[index])), self.targets[index]


Features = np.ndarray | LazyRows
"""The inputs of a split: an in-memory float array, or rows read lazily."""


def take_rows(x: Features, rows: np.ndarray | Sequence[int]) -> np.ndarray:
    """The inputs of `rows` as an array (read now for lazy rows: keep `rows` small)."""
    picked = np.asarray(rows, dtype=np.int64)
    return x[picked].materialise() if isinstance(x, LazyRows) else x[picked]


def features_fingerprint_parts(name: str, x: Features) -> dict[str, np.ndarray]:
    """Arrays that identify `x` for a fingerprint: the array itself, or the source identity and its rows."""
    if isinstance(x, LazyRows):
        identity = np.frombuffer(x.identity.encode(), dtype=np.uint8)
        return {f"{name}_source": identity, f"{name}_rows": x.rows}
    return {name: x}
