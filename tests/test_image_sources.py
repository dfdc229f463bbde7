"""Indexed data sources: image folders, image CSVs and py: Dataset factories, read lazily by the loaders."""

import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from flows.tune_pipeline import tune_pipeline
from schemas.config import PipelineConfig
from schemas.final import TestMetrics
from schemas.hyperparams import HyperParams
from stagetune.cli import app
from stagetune.data.images import ImageReader
from stagetune.data.source import LazyRows, LoadOptions
from stagetune.data.stage import load_stage_arrays, run_sample_stage
from stagetune.errors import InputError
from stagetune.examples_data import SHAPES, make_keypoints, make_shapes
from stagetune.training.loaders import LazyBatches, TensorBatches, make_eval_loader, make_train_loader
from tests.conftest import tiny_config

runner = CliRunner()
KEYPOINT_TARGETS = [f"{c}_{a}" for c in ("left_top", "right_top", "right_bottom", "left_bottom") for a in "xy"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shapes") / "shapes"
    make_shapes(folder, per_class=12, size=12, seed=3)
    return folder


def folder_config(source: Path | str, **data: object) -> PipelineConfig:
    return PipelineConfig.model_validate({"data": {"source": f"{source}/", **data}, "model": {"family": "cnn"}})


class CountingReader:
    """Wraps a reader: counts reads and the decoded tensors still alive (each freed one is counted off)."""

    def __init__(self, reader: ImageReader) -> None:
        self.reader, self.reads, self.live, self.most_live = reader, 0, 0, 0

    def __len__(self) -> int:
        return len(self.reader)

    def read(self, index: int) -> torch.Tensor:
        tensor = self.reader.read(index)
        self.reads += 1
        self.live += 1
        self.most_live = max(self.most_live, self.live)
        weakref.finalize(tensor, self._freed)
        return tensor

    def _freed(self) -> None:
        self.live -= 1


def test_a_lazily_loaded_folder_never_holds_more_than_a_batch(shapes: Path, tmp_path: Path) -> None:
    sample = run_sample_stage(folder_config(shapes), tmp_path)
    arrays = load_stage_arrays(sample)
    assert isinstance(arrays.X_train, LazyRows)
    counting = CountingReader(arrays.X_train.reader)  # type: ignore[arg-type]
    rows = LazyRows(counting, arrays.X_train.rows, arrays.X_train.input_shape)
    feed = make_train_loader(rows, arrays.y_train, HyperParams(batch_size=5), len(SHAPES), seed=0)
    assert isinstance(feed.loader, LazyBatches)
    seen = 0
    for inputs, targets in feed.loader:
        seen += len(targets)
        assert counting.reads == seen  # read as the batch is made, not up front
        assert inputs.shape[1:] == (3, 12, 12)
    assert seen == len(rows) == sample.n_train
    assert counting.most_live <= 5  # one batch of decoded images at a time
    assert counting.reads == len(rows)


def test_workers_yield_the_same_batches_as_the_main_process(shapes: Path, tmp_path: Path) -> None:
    sample = run_sample_stage(folder_config(shapes), tmp_path)
    hp = HyperParams(batch_size=8, rebalance="balanced_batches")
    batches = []
    for workers in (0, 1):
        arrays = load_stage_arrays(sample, LoadOptions(num_workers=workers))
        feed = make_train_loader(arrays.X_train, arrays.y_train, hp, len(SHAPES), seed=4)
        batches.append(list(feed.loader))
    assert len(batches[0]) == len(batches[1]) == -(-sample.n_train // 8)
    for (x0, y0), (x1, y1) in zip(*batches, strict=True):
        assert torch.equal(x0, x1)
        assert torch.equal(y0, y1)
        assert len(torch.unique(y0)) == len(SHAPES)  # balanced batches: every class in each


def test_lazy_rows_take_every_rebalancing_strategy_as_arrays_do(shapes: Path, tmp_path: Path) -> None:
    sample = run_sample_stage(folder_config(shapes), tmp_path)
    arrays = load_stage_arrays(sample)
    keep = np.flatnonzero(arrays.y_train != 0)[::2].tolist() + np.flatnonzero(arrays.y_train == 0).tolist()
    lazy, y = arrays.X_train[np.asarray(keep)], arrays.y_train[keep]  # class 0 now the majority
    dense = lazy.materialise()
    for strategy in ("oversample", "class_weights"):
        hp = HyperParams(batch_size=4, rebalance=strategy)
        lazy_feed = make_train_loader(lazy, y, hp, len(SHAPES), seed=1, oversample_ratio=1.0)
        dense_feed = make_train_loader(dense, y, hp, len(SHAPES), seed=1, oversample_ratio=1.0)
        lazy_labels = torch.cat([targets for _, targets in lazy_feed.loader])
        dense_labels = torch.cat([targets for _, targets in dense_feed.loader])
        assert sorted(lazy_labels.tolist()) == sorted(dense_labels.tolist())
        if strategy == "oversample":  # minority rows duplicated by index up to the majority's count
            assert torch.bincount(lazy_labels).tolist() == [int((y == 0).sum())] * len(SHAPES)
        else:
            assert lazy_feed.class_weights is not None
            assert dense_feed.class_weights is not None
            assert torch.equal(lazy_feed.class_weights, dense_feed.class_weights)


def test_stage_one_splits_and_stratifies_the_file_list_and_stores_no_pixels(shapes: Path, tmp_path: Path) -> None:
    config = folder_config(shapes).model_copy(
        update={"sample": PipelineConfig().sample.model_copy(update={"classes": ["circle", "cross"], "max_rows": 10})}
    )
    sample = run_sample_stage(config, tmp_path)
    assert (sample.source_kind, sample.task, sample.input_shape) == ("image_folder", "classification", [3, 12, 12])
    assert sample.n_train + sample.n_val + sample.n_test == sample.n_rows == 12 * len(SHAPES)
    assert sample.class_names == sorted(SHAPES)
    assert sample.sampled_class_names == ["circle", "cross"]
    assert sample.n_train_sampled == 10
    assert sample.class_counts_sampled == {"circle": 5, "cross": 5}
    assert sample.image_mean is not None
    assert len(sample.image_mean) == 3
    with np.load(sample.data_path) as stored:
        assert all(stored[key].dtype != np.float32 or key.startswith("y") for key in stored.files)
        assert max(stored[key].size for key in stored.files) <= sample.n_rows  # indices and labels, no pixels
    arrays = load_stage_arrays(sample)
    for x, y in ((arrays.X_train, arrays.y_train), (arrays.X_val, arrays.y_val), (arrays.X_test, arrays.y_test)):
        assert set(np.unique(y).tolist()) == set(range(len(SHAPES)))  # every class in every split
        assert len(x) == len(y)
    assert set(arrays.X_train.rows) | set(arrays.X_val.rows) | set(arrays.X_test.rows) == set(range(sample.n_rows))
    normalised = make_eval_loader(arrays.X_train, arrays.y_train, 1000)
    assert not isinstance(normalised, TensorBatches)
    pixels = next(iter(normalised))[0]
    assert abs(float(pixels.mean())) < 0.2
    assert 0.8 < float(pixels.std()) < 1.2


def test_an_image_csv_is_a_regression_on_its_coordinates(tmp_path: Path) -> None:
    table = make_keypoints(tmp_path / "kp", count=30, size=16, seed=1)
    data = {"source": str(table), "image_column": "image", "target": KEYPOINT_TARGETS}
    config = PipelineConfig.model_validate({"data": data, "model": {"family": "cnn"}})
    sample = run_sample_stage(config, tmp_path / "out")
    assert (sample.task, sample.input_shape, sample.target_names) == ("regression", [1, 16, 16], KEYPOINT_TARGETS)
    assert all(-1 <= m <= 1 for m in sample.target_mean)


@pytest.mark.parametrize(
    ("layout", "data", "field", "words"),
    [
        ("missing", {}, "data.source", "does not exist"),
        ("empty", {}, "data.source", "no class subfolders"),
        ("loose images", {}, "data.source", "the images lie directly in it"),
        ("no images", {}, "data.source", "no .png/.jpg/.jpeg images"),
        ("one class", {}, "data.source", "one class subfolder"),
        ("tiny class", {}, "data.source", "fewer than 3 images"),
        ("broken image", {}, "data.source", "broken.png"),
        ("csv", {"image_column": "picture"}, "data.image_column", "'picture' is not a column"),
        ("csv missing file", {"image_column": "image"}, "data.image_column", "do not exist"),
    ],
)
def test_bad_image_input_names_the_field_and_writes_nothing(
    shapes: Path, tmp_path: Path, layout: str, data: dict[str, object], field: str, words: str
) -> None:
    root = tmp_path / "images"
    if layout != "missing":
        root.mkdir()
    if layout == "loose images":
        shutil.copy(shapes / "circle" / "00000.png", root)
    if layout == "no images":
        (root / "a").mkdir()
        (root / "a" / "notes.txt").write_text("hello")
    if layout in ("one class", "tiny class", "broken image"):
        shutil.copytree(shapes / "circle", root / "circle")
    if layout == "tiny class":
        (root / "few").mkdir()
        shutil.copy(shapes / "circle" / "00000.png", root / "few")
    if layout == "broken image":
        shutil.copytree(shapes / "cross", root / "cross")
        (root / "cross" / "broken.png").write_bytes(b"not a png")
        data = {"image_size": 12}
    source: str = f"{root}/"
    target: dict[str, object] = {}
    if layout.startswith("csv"):
        table = make_keypoints(tmp_path / "kp", count=5, size=8)
        if layout == "csv missing file":
            (table.parent / "images" / "00003.png").unlink()
        source, target = str(table), {"target": KEYPOINT_TARGETS}
    config = PipelineConfig.model_validate({"data": {"source": source, **target, **data}, "model": {"family": "cnn"}})
    out = tmp_path / "out"
    with pytest.raises(InputError) as caught:
        run_sample_stage(config, out)
    assert caught.value.field == field
    assert words in caught.value.message
    assert not out.exists()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["data.source=py:not a module"], "data.source"),
        (["data.source=py:tests.image_factory:needs_an_argument"], "data.source"),
        (["data.source=py:tests.no_such_module:make"], "data.source"),
        (["data.source=data.csv", "data.target=y", "model.family=cnn"], "model"),
        (["data.source=/tmp/some-folder/", "data.image_column=path"], "data"),
        (["data.source=/tmp/some-folder/", "data.image_size=[1, 2, 3]"], "data.image_size"),
    ],
)
def test_bad_source_settings_exit_2_at_validation(overrides: list[str], field: str) -> None:
    result = runner.invoke(app, ["validate", *(f"--set={o}" for o in overrides)])
    assert result.exit_code == 2, result.output
    assert field in result.output


def test_make_example_writes_a_folder_once(tmp_path: Path) -> None:
    out = tmp_path / "shapes"
    first = runner.invoke(app, ["make-example", "shapes", str(out), "--count", "3", "--size", "8"])
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in out.iterdir()) == sorted(SHAPES)
    assert sum(1 for _ in out.rglob("*.png")) == 3 * len(SHAPES)
    again = runner.invoke(app, ["make-example", "shapes", str(out)])
    assert again.exit_code == 2
    assert "not an empty folder" in again.output
    unknown = runner.invoke(app, ["make-example", "blobs", str(tmp_path / "b")])
    assert unknown.exit_code == 2
    assert not (tmp_path / "b").exists()


def test_example_data_is_deterministic_in_its_seed(tmp_path: Path) -> None:
    tables = [make_keypoints(tmp_path / f"kp{i}", count=4, size=16, seed=5) for i in range(2)]
    assert tables[0].read_text() == tables[1].read_text()
    values = np.loadtxt(tables[0], delimiter=",", skiprows=1, usecols=range(1, 9))
    assert values.min() >= -1
    assert values.max() <= 1


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_an_image_folder_tunes_a_cnn_end_to_end(shapes: Path, tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path,
        f"data.source={shapes}/",
        "model.family=cnn",
        "execution.num_workers=0",
        "coarse.n_trials=2",
        "refine.n_trials=2",
        "refine.warm_start=1",
        "sanity.lr_range_test=false",
        "space.channels.choices=[4, 8]",
        "model.baseline.channels=8",
    )
    result = tune_pipeline(config)
    assert result.status == "completed", result.message
    assert result.sample is not None
    assert result.sample.source_kind == "image_folder"
    assert result.final is not None
    assert isinstance(result.final.test, TestMetrics)
    assert result.final.test.n_samples == result.sample.n_test


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_dataset_factory_source_end_to_end(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path,
        "data.source=py:tests.image_factory:make_datasets",
        "model.family=cnn",
        "execution.num_workers=1",  # the user's Dataset is read in a DataLoader worker
        "coarse.n_trials=2",
        "refine.n_trials=2",
        "refine.warm_start=1",
        "sanity.lr_range_test=false",
        "space.channels.choices=[4, 8]",
        "space.optimizer.choices=[adam]",
        "space.batch_size.choices=[16]",
        "model.baseline.channels=8",
        "final.max_epochs=8",
    )
    result = tune_pipeline(config)
    assert result.status == "completed", result.message
    assert result.sample is not None
    assert (result.sample.source_kind, result.sample.input_shape) == ("factory", [1, 8, 8])
    assert result.sample.class_names == ["0", "1", "2"]
    assert result.final is not None
    assert isinstance(result.final.test, TestMetrics)
    assert result.final.test.accuracy > 0.8  # a bar per class: easy for a CNN
