"""The served image model's preprocessing: image paths or base64 bytes in, exactly the batch training read out."""

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from schemas.config import PipelineConfig
from schemas.hyperparams import HyperParams
from schemas.results import SampleResult
from stagetune.data.source import LazyRows
from stagetune.data.stage import load_stage_arrays, run_sample_stage
from stagetune.examples_data import make_keypoints, make_shapes
from stagetune.models import build_model
from stagetune.registry import save_checkpoint
from stagetune.serving import pyfunc_model
from stagetune.serving.log_model import model_signature
from stagetune.serving.preprocessing import (
    ImagePreprocessor,
    ServingInputError,
    preprocessor_from_state,
    serving_paths,
)
from stagetune.serving.pyfunc_model import StagetuneModel

KEYPOINT_TARGETS = [f"{c}_{a}" for c in ("left_top", "right_top", "right_bottom", "left_bottom") for a in "xy"]


@pytest.fixture(scope="module")
def folder_stage(tmp_path_factory: pytest.TempPathFactory) -> tuple[SampleResult, ImagePreprocessor, pd.DataFrame]:
    """Stage 1 on a tiny shapes folder (RGB, 12 px), and the serving files it wrote."""
    root = tmp_path_factory.mktemp("serving-images")
    make_shapes(root / "shapes", per_class=6, size=12, seed=5)
    config = PipelineConfig.model_validate({"data": {"source": f"{root / 'shapes'}/"}, "model": {"family": "cnn"}})
    sample = run_sample_stage(config, root / "out")
    return (sample, *_serving_files(sample))


def _serving_files(sample: SampleResult) -> tuple[ImagePreprocessor, pd.DataFrame]:
    state_path, rows_path = serving_paths(sample.data_path)
    preprocessor = preprocessor_from_state(json.loads(state_path.read_text()))
    assert isinstance(preprocessor, ImagePreprocessor)
    return preprocessor, pd.read_parquet(rows_path)


def _training_batch(sample: SampleResult) -> np.ndarray:
    x_test = load_stage_arrays(sample).X_test
    assert isinstance(x_test, LazyRows)
    return x_test.materialise()


def test_stage_one_writes_the_image_preprocessing_and_the_test_images_as_absolute_paths(
    folder_stage: tuple[SampleResult, ImagePreprocessor, pd.DataFrame],
) -> None:
    sample, preprocessor, rows = folder_stage
    assert (preprocessor.column, preprocessor.size, preprocessor.mode) == ("image", [12, 12], "RGB")
    assert (preprocessor.mean, preprocessor.std) == (sample.image_mean, sample.image_std)
    assert list(rows.columns) == ["image"]
    assert len(rows) == sample.n_test
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in rows["image"])


def test_paths_give_exactly_the_batch_training_reads(
    folder_stage: tuple[SampleResult, ImagePreprocessor, pd.DataFrame],
) -> None:
    sample, preprocessor, rows = folder_stage
    served = preprocessor.transform(rows)
    assert served.dtype == np.float32
    assert served.shape == (sample.n_test, 3, 12, 12)
    assert np.array_equal(served, _training_batch(sample))


def test_base64_bytes_give_the_same_batch_as_paths_and_rows_may_mix_them(
    folder_stage: tuple[SampleResult, ImagePreprocessor, pd.DataFrame],
) -> None:
    _, preprocessor, rows = folder_stage
    encoded = [base64.b64encode(Path(p).read_bytes()).decode("ascii") for p in rows["image"]]
    expected = preprocessor.transform(rows)
    assert np.array_equal(preprocessor.transform(pd.DataFrame({"image_base64": encoded})), expected)
    mixed = pd.DataFrame(
        {
            "image": [p if i % 2 else None for i, p in enumerate(rows["image"])],
            "image_base64": [None if i % 2 else e for i, e in enumerate(encoded)],
        }
    )
    assert np.array_equal(preprocessor.transform(mixed), expected)


def test_the_state_survives_json_and_the_signature_takes_either_column(
    folder_stage: tuple[SampleResult, ImagePreprocessor, pd.DataFrame],
) -> None:
    _, preprocessor, rows = folder_stage
    state = json.loads(json.dumps(preprocessor.to_state()))
    assert state["kind"] == "image"
    assert preprocessor_from_state(state) == preprocessor
    inputs = model_signature(preprocessor, "classification", ["circle"]).inputs
    assert [(c.name, c.required) for c in inputs.inputs] == [("image", False), ("image_base64", False)]
    example = preprocessor.input_example(rows)
    assert list(example.columns) == ["image_base64"]
    assert np.array_equal(preprocessor.transform(example), preprocessor.transform(rows.head(len(example))))


def test_an_image_of_another_size_and_mode_is_converted_and_resized_as_in_training(
    folder_stage: tuple[SampleResult, ImagePreprocessor, pd.DataFrame], tmp_path: Path
) -> None:
    _, preprocessor, rows = folder_stage
    first = Path(rows["image"][0])
    with Image.open(first) as image:
        image.convert("L").resize((30, 20)).save(tmp_path / "big.png")
    served = preprocessor.transform(pd.DataFrame({"image": [str(tmp_path / "big.png")]}))
    assert served.shape == (1, 3, 12, 12)


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (pd.DataFrame({"picture": ["a.png"]}), "lacks column 'image' (image paths) or 'image_base64'"),
        (pd.DataFrame({"image": ["FIRST", None]}), "row 1 gives neither"),
        (pd.DataFrame({"image": ["FIRST"], "image_base64": ["aGk="]}), "row 0 gives both"),
        (pd.DataFrame({"image_base64": ["not base64!"]}), "row 0, column 'image_base64' is not base64"),
        (pd.DataFrame({"image_base64": ["aGVsbG8="]}), "row 0, column 'image_base64': image given as bytes cannot"),
        (pd.DataFrame({"image": ["FIRST", "/nowhere/x.png"]}), "row 1, column 'image': image '/nowhere/x.png'"),
        (pd.DataFrame({"image": [3.5]}), "an image path is text"),
    ],
)
def test_bad_rows_are_refused_naming_the_row_and_column(
    folder_stage: tuple[SampleResult, ImagePreprocessor, pd.DataFrame], frame: pd.DataFrame, words: str
) -> None:
    _, preprocessor, rows = folder_stage
    frame = frame.replace("FIRST", rows["image"][0])
    with pytest.raises(ServingInputError) as raised:
        preprocessor.transform(frame)
    assert words in str(raised.value)


def test_an_image_csv_serves_under_its_own_image_column(tmp_path: Path) -> None:
    table = make_keypoints(tmp_path / "kp", count=24, size=10, seed=2)
    renamed = pd.read_csv(table).rename(columns={"image": "file"})
    renamed.to_csv(table, index=False)
    data = {"source": str(table), "image_column": "file", "target": KEYPOINT_TARGETS}
    sample = run_sample_stage(PipelineConfig.model_validate({"data": data, "model": {"family": "cnn"}}), tmp_path / "o")
    preprocessor, rows = _serving_files(sample)
    assert (preprocessor.column, preprocessor.mode, list(rows.columns)) == ("file", "L", ["file"])
    assert np.array_equal(preprocessor.transform(rows), _training_batch(sample))


def test_the_model_predicts_images_a_chunk_at_a_time_as_in_one_batch(
    folder_stage: tuple[SampleResult, ImagePreprocessor, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample, _, rows = folder_stage
    hp = HyperParams(channels=4)
    network = build_model("cnn", hp, sample.input_shape, len(sample.class_names), None, seed=0)
    save_checkpoint(
        tmp_path / "checkpoint.pt", network, family="cnn", hp=hp, input_shape=sample.input_shape,
        num_classes=len(sample.class_names), class_names=sample.class_names, import_path=None,
        data_fingerprint="fp", metrics=None,
    )  # fmt: skip
    model = StagetuneModel()
    model.load_files(tmp_path / "checkpoint.pt", serving_paths(sample.data_path)[0])
    whole = model.decode(model.raw_outputs(_training_batch(sample)), "proba")
    monkeypatch.setattr(pyfunc_model, "_BATCH_VALUES", 3 * 12 * 12 * 2)  # two images per chunk
    assert model.rows_per_chunk() == 2
    chunked = model.predict(None, rows, params={"output": "proba"})
    assert list(chunked.columns) == sample.class_names
    np.testing.assert_allclose(chunked.to_numpy(), whole.to_numpy(), rtol=1e-6)
    assert model.predict(None, rows.head(0)).empty
