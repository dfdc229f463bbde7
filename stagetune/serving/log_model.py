"""Log the final model as an MLflow 3 logged model (a pyfunc) linked to the final stage's run."""

import contextlib
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import AnyType

from stagetune.serving.preprocessing import Preprocessor
from stagetune.serving.pyfunc_model import OUTPUTS, PREDICTION_COLUMN, PREPROCESS, WEIGHTS
from stagetune.serving.requirements_check import start_requirements_check, wait_for_requirements_check

MODEL_NAME = "model"
"""The logged model's name (MLflow 3's `name=`), shown in the run's Models column."""
_REQUIREMENTS = ("torch", "numpy", "pandas", "scikit-learn", "pyarrow", "mlflow", "pillow")


def model_signature(preprocessor: Preprocessor, task: str, output_names: list[str]) -> ModelSignature:
    """Raw input columns (as the loader read them, or image paths/bytes), the outputs, and the `output`
    parameter (label|proba)."""
    inputs = Schema(
        [
            ColSpec(AnyType() if kind == "any" else kind, name, required=required)
            for name, kind, required in preprocessor.schema_columns()
        ]
    )
    if task == "regression":
        outputs = Schema([ColSpec("double", name) for name in output_names])
    else:
        outputs = Schema([ColSpec("string", PREDICTION_COLUMN)])
    params = ParamSchema([ParamSpec("output", "string", OUTPUTS[0])])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def log_pyfunc_model(
    tracking_uri: str,
    run_id: str,
    *,
    weights: Path,
    preprocess: Path,
    preprocessor: Preprocessor,
    task: str,
    output_names: list[str],
    raw_example: pd.DataFrame,
) -> ModelInfo:
    """Log weights + preprocessing as a pyfunc logged model in `run_id`'s experiment, with `run_id` as its source.

    `raw_example` (raw test rows) gives the input example (`Preprocessor.input_example`); MLflow validates
    it by a prediction.
    Requirements are pinned from this environment instead of inferred (inference loads the model in a
    subprocess); stagetune itself must be installed where the model is loaded.
    MLflow's check of those requirements against the installed packages (seconds, once per process) is
    started early by the final stage (`check_requirements_early`); this waits for it.
    """
    wait_for_requirements_check()
    with tracking_uri_set(tracking_uri):
        run = mlflow.get_run(run_id)
        # Model.log on its own files the model under the process's active experiment (else the default
        # one, "0"), not under its run's: MLflow's UI then lists it neither on the run page nor in the
        # experiment, and a local store writes its files into the current folder's ./mlruns.
        model = mlflow.initialize_logged_model(
            name=MODEL_NAME, source_run_id=run_id, experiment_id=run.info.experiment_id, params=run.data.params
        )
        return Model.log(
            artifact_path=None,  # MLflow 3: the model is named, not placed under the run's artifacts
            name=MODEL_NAME,
            model_id=model.model_id,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=str(Path(__file__).with_name("model_code.py")),  # models from code: nothing pickled
            artifacts={WEIGHTS: str(weights), PREPROCESS: str(preprocess)},
            signature=model_signature(preprocessor, task, output_names),
            input_example=preprocessor.input_example(raw_example),
            pip_requirements=_pinned_requirements(),
        )


def check_requirements_early() -> None:
    """Start MLflow's requirements check of the model about to be logged (`requirements_check`)."""
    start_requirements_check(_pinned_requirements())


def _pinned_requirements() -> list[str]:
    pinned = []
    for name in _REQUIREMENTS:
        with contextlib.suppress(PackageNotFoundError):
            pinned.append(f"{name}=={version(name)}")
    return pinned


@contextlib.contextmanager
def tracking_uri_set(uri: str) -> Iterator[None]:
    """MLflow's model logging (and, with a database store, registering from `models:/<model_id>`) reads the
    process-wide tracking URI: set it for the calls, then restore it."""
    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # type: ignore[arg-type]
