"""The final stage's model work: log the pyfunc, record its test predictions, re-score the champion on new data."""

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient

from schemas.config import PipelineConfig
from schemas.results import SampleResult
from stagetune.data.source import Features, LazyRows
from stagetune.registry.champion import CHAMPION, TAG_DATA_FINGERPRINT, TAG_METRIC, champion_value_on, rescore_tag
from stagetune.serving.log_model import log_pyfunc_model, tracking_uri_set
from stagetune.serving.preprocessing import preprocessor_from_state, serving_paths
from stagetune.serving.pyfunc_model import StagetuneModel
from stagetune.task.base import Task

TEST_PREDICTIONS_ARTIFACT = "predictions/test.json"
"""The final model's test predictions, decoded (labels or original units), as pandas `to_dict("split")`."""
TAG_CONFIG_HASH = "stagetune.config_hash"
TAG_PARENT_RUN = "stagetune.parent_run"
TAG_TEST_PREFIX = "stagetune.test."


@dataclass(frozen=True)
class ServingFiles:
    """What Stage 1 left beside its npz for the served model."""

    preprocess: Path
    raw_test_rows: pd.DataFrame


def serving_files(sample: SampleResult) -> ServingFiles:
    """The fitted preprocessing and raw test rows of `sample`; a run prepared by an older stagetune has none."""
    preprocess, rows = serving_paths(sample.data_path)
    if not preprocess.is_file() or not rows.is_file():
        raise FileNotFoundError(
            f"Stage 1 left no serving files beside {sample.data_path} ({preprocess.name}, {rows.name}): "
            "rerun the sample stage (a run folder made by an older stagetune lacks them)"
        )
    return ServingFiles(preprocess, pd.read_parquet(rows))


def log_final_model(
    client: MlflowClient, tracking_uri: str, run_id: str, checkpoint: Path, sample: SampleResult, x_test: Features
) -> ModelInfo:
    """Log the pyfunc model of `run_id` and its decoded predictions on Stage 1's test inputs.

    The predictions come from the inputs training read (the test matrix, or the images decoded by the
    source's readers), not from the served preprocessing: the served model must reproduce them.
    """
    files = serving_files(sample)
    preprocessor = preprocessor_from_state(json.loads(files.preprocess.read_text()))
    names = sample.target_names if sample.task == "regression" else sample.class_names
    info = log_pyfunc_model(
        tracking_uri, run_id, weights=checkpoint, preprocess=files.preprocess, preprocessor=preprocessor,
        task=sample.task, output_names=list(names), raw_example=files.raw_test_rows,
    )  # fmt: skip
    model = StagetuneModel()
    model.load_files(checkpoint, files.preprocess)
    predictions = model.decode(_test_outputs(model, x_test))
    client.log_dict(run_id, predictions.to_dict(orient="split"), TEST_PREDICTIONS_ARTIFACT)
    return info


def _test_outputs(model: StagetuneModel, x_test: Features) -> np.ndarray:
    """The network's outputs on the test split; lazy rows are read a chunk at a time."""
    if not isinstance(x_test, LazyRows):
        return model.raw_outputs(x_test)
    step = model.rows_per_chunk()
    starts = range(0, max(len(x_test), 1), step)
    return np.concatenate([model.raw_outputs(x_test[start : start + step].materialise()) for start in starts])


def version_tags(config: PipelineConfig, parent_run_id: str, test_metrics: dict[str, float]) -> dict[str, str]:
    """Config hash, parent run and test metrics for the registered version (beside the registry's own tags)."""
    digest = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]
    tags = {TAG_CONFIG_HASH: digest, TAG_PARENT_RUN: parent_run_id}
    tags |= {f"{TAG_TEST_PREFIX}{name}": repr(value) for name, value in test_metrics.items() if math.isfinite(value)}
    return tags


def rescore_champion(
    client: MlflowClient,
    tracking_uri: str,
    model_name: str,
    *,
    fingerprint: str,
    metric_name: str,
    sample: SampleResult,
    y_test: np.ndarray,
    task: Task,
) -> str | None:
    """Re-score the champion on today's test split when it was scored on other data; tag the score on it.

    Returns a sentence for the stage result (None when there is no champion or it was scored on this data).
    The champion's own pyfunc predicts today's raw test rows, so its preprocessing is its own.
    """
    try:
        champion = client.get_model_version_by_alias(model_name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None
    tags = dict(champion.tags or {})
    if tags.get(TAG_DATA_FINGERPRINT) == fingerprint or tags.get(TAG_METRIC) != metric_name:
        return None
    if champion_value_on(champion, fingerprint) is None:
        rows = serving_files(sample).raw_test_rows
        try:
            with tracking_uri_set(tracking_uri):
                loaded = mlflow.pyfunc.load_model(f"models:/{model_name}/{champion.version}")
                output = "label" if sample.task == "regression" else "proba"
                predicted = loaded.predict(rows, params={"output": output})
        except Exception as exc:
            return f"champion v{champion.version} could not be re-scored on today's test split ({exc})"
        outputs = _as_outputs(predicted, sample)
        metrics = task.test_metrics(torch.from_numpy(outputs), task.targets_tensor(y_test), math.nan)
        value = float(getattr(metrics, metric_name))
        client.set_model_version_tag(
            model_name, str(champion.version), rescore_tag(fingerprint), f"{metric_name}={value!r}"
        )
    score = champion_value_on(client.get_model_version(model_name, str(champion.version)), fingerprint)
    return f"the data changed: champion v{champion.version} re-scored on today's test split: {metric_name} {score:.4g}"


def _as_outputs(predicted: pd.DataFrame, sample: SampleResult) -> np.ndarray:
    """The champion's predictions as today's network outputs: log-probabilities over today's classes
    (classes it does not know get none), or targets standardised with today's mean and std."""
    if sample.task == "regression":
        mean, std = np.asarray(sample.target_mean), np.asarray(sample.target_std)
        return ((predicted[sample.target_names].to_numpy(np.float64) - mean) / std).astype(np.float32)
    probabilities = np.column_stack(
        [
            predicted[name].to_numpy(np.float64) if name in predicted else np.zeros(len(predicted))
            for name in sample.class_names
        ]
    )
    return np.log(probabilities + 1e-12).astype(np.float32)
