"""The champion as an `mlflow.pyfunc` model: raw rows in, labels (or class probabilities) or targets in
their original units out.

The model's artifacts are plain data: the weights checkpoint (which carries the architecture arguments,
the class names or the target scaling, see `registry.checkpoint`) and the fitted preprocessing as JSON
(`serving.preprocessing`). The code is stagetune itself, which must be importable where the model is
loaded or served (`mlflow models serve --env-manager local` from stagetune's environment).

    model = mlflow.pyfunc.load_model("models:/NAME@champion")
    model.predict(raw_rows)                             # column "prediction" (class) or one per target
    model.predict(raw_rows, params={"output": "proba"}) # classification: one column per class

Raw rows are the table's columns, or for an image source one image per row: a path in the image
column, or the file's bytes in base64 in `<image column>_base64` (`serving.preprocessing.ImagePreprocessor`).
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel, PythonModelContext

from stagetune.registry.checkpoint import LoadedModel, load_checkpoint, read_model_args
from stagetune.serving.preprocessing import Preprocessor, ServingInputError, preprocessor_from_state

WEIGHTS = "weights"
PREPROCESS = "preprocess"
OUTPUTS = ("label", "proba")
PREDICTION_COLUMN = "prediction"
_BATCH = 4096
_BATCH_VALUES = 1 << 22
"""Rows are preprocessed and predicted in chunks of at most this many input values (16 MB of float32):
4096 table rows, or a few dozen large images, are decoded at a time."""


class StagetuneModel(PythonModel):
    """A stagetune network with its fitted preprocessing and label/target decoding (see the module docstring)."""

    def __init__(self) -> None:
        self._network: LoadedModel | None = None
        self._preprocessor: Preprocessor | None = None
        self._args: dict[str, Any] = {}

    def load_context(self, context: PythonModelContext) -> None:
        """Rebuild the network (CPU, eval mode) and the preprocessing from the model's artifacts."""
        self.load_files(Path(context.artifacts[WEIGHTS]), Path(context.artifacts[PREPROCESS]))

    def load_files(self, weights: Path, preprocess: Path) -> None:
        """As `load_context`, from the two files (the final stage predicts with exactly this path)."""
        self._network = load_checkpoint(weights)
        self._args = read_model_args(weights)
        self._preprocessor = preprocessor_from_state(json.loads(preprocess.read_text()))

    def predict(
        self, context: PythonModelContext | None, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Predictions for raw rows: labels as in the data, class probabilities with params output=proba,
        or regression targets in their original units."""
        if self._network is None or self._preprocessor is None:
            raise RuntimeError("the model's artifacts are not loaded (load_context was not called)")
        output = str((params or {}).get("output", "label"))
        if output not in OUTPUTS:
            raise ServingInputError(f"params output={output!r} is not one of {list(OUTPUTS)}")
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        step = self.rows_per_chunk()
        outputs = [
            self.raw_outputs(self._preprocessor.transform(frame.iloc[start : start + step]))
            for start in range(0, max(len(frame), 1), step)
        ]
        return self.decode(np.concatenate(outputs), output, frame.index)

    def rows_per_chunk(self) -> int:
        """How many rows are preprocessed and predicted at a time (fewer for large inputs such as images)."""
        assert self._network is not None
        values = int(np.prod(self._network.input_shape)) if self._network.input_shape else 1
        return max(1, min(_BATCH, _BATCH_VALUES // max(values, 1)))

    def decode(self, outputs: np.ndarray, output: str = "label", index: pd.Index | None = None) -> pd.DataFrame:
        """Network outputs as the data's labels, class probabilities, or targets in their original units."""
        assert self._network is not None
        names = self._network.class_names
        if self._args.get("task") == "regression":
            mean, std = np.asarray(self._args["target_mean"]), np.asarray(self._args["target_std"])
            return pd.DataFrame(outputs * std + mean, columns=names, index=index)
        if output == "proba":
            probabilities = torch.softmax(torch.from_numpy(outputs), dim=1).numpy()
            return pd.DataFrame(probabilities, columns=names, index=index)
        labels = np.asarray(names, dtype=object)[outputs.argmax(axis=1)]
        return pd.DataFrame({PREDICTION_COLUMN: labels}, index=index)

    def raw_outputs(self, features: np.ndarray) -> np.ndarray:
        """The network's outputs (logits, or standardised targets) for preprocessed rows, in batches."""
        assert self._network is not None
        network = self._network.model  # flat rows: networks reshape to their input shape themselves
        chunks = []
        with torch.no_grad():
            for start in range(0, len(features), _BATCH):
                batch = torch.from_numpy(features[start : start + _BATCH])
                chunks.append(network(batch).float().numpy())
        width = self._network.num_classes
        return np.concatenate(chunks).astype(np.float64) if chunks else np.empty((0, width))
