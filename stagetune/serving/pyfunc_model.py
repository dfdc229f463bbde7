"""The champion as an `mlflow.pyfunc` model: raw rows in, labels (or class probabilities) or targets in
their original units out.

The model's artifacts are plain data: the weights checkpoint (which carries the architecture arguments,
the class names or the target scaling, see `registry.checkpoint`) and the fitted preprocessing as JSON
(`serving.preprocessing`). The code is stagetune itself, which must be importable where the model is
loaded or served (`mlflow models serve --env-manager local` from stagetune's environment).

    model = mlflow.pyfunc.load_model("models:/NAME@champion")
    model.predict(raw_rows)                             # column "prediction" (class) or one per target
    model.predict(raw_rows, params={"output": "proba"}) # classification: one column per class
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
        return self.decode(self.raw_outputs(self._preprocessor.transform(frame)), output, frame.index)

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
