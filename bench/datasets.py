"""The benchmark datasets: each a stagetune config (the repository's examples, or a CSV) and a test metric."""

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from bench.common import REPO
from schemas.config import PipelineConfig
from stagetune.config_loading import load_config
from stagetune.data.defaults import with_data_defaults
from stagetune.data.stage import StageArrays, load_stage_arrays, run_sample_stage
from stagetune.task import Task, task_for

Metric = Literal["accuracy", "balanced_accuracy", "r2"]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset to benchmark: the config it runs under and the held-out test metric that judges it."""

    name: str
    config_file: Path | None
    metric: Metric
    overrides: tuple[str, ...] = ()


BUILTIN_SPECS = {
    "digits": DatasetSpec("digits", REPO / "configs" / "digits.yaml", "accuracy"),
    "breast_cancer": DatasetSpec("breast_cancer", REPO / "configs" / "breast_cancer.yaml", "accuracy"),
    "imbalanced": DatasetSpec("imbalanced", REPO / "configs" / "imbalanced.yaml", "balanced_accuracy"),
    "diabetes": DatasetSpec("diabetes", REPO / "configs" / "diabetes.yaml", "r2"),
    "friedman": DatasetSpec("friedman", REPO / "configs" / "friedman.yaml", "r2"),
}


def csv_spec(path: Path, target: str, metric: Metric) -> DatasetSpec:
    """A user's CSV under the embedded defaults (plus the digits example's search sizes)."""
    overrides: tuple[str, ...] = (
        f"data.source={path.resolve()}",
        f"data.target={target}",
        "name=csv",
        "coarse.n_trials=16",
        "coarse.epochs=4",
        "refine.n_trials=12",
        "refine.epochs=10",
        "refine.narrowing.top_k=4",
    )
    if metric == "balanced_accuracy":
        overrides += ("search.objective=val_balanced_acc", "final.champion_metric=balanced_accuracy")
    if metric == "r2":
        overrides += ("data.task=regression",)
    return DatasetSpec(path.stem, None, metric, overrides)


@dataclass(frozen=True)
class BenchData:
    """One dataset at one seed: its config, Stage 1's arrays, and what a model needs to know about them."""

    spec: DatasetSpec
    config: PipelineConfig
    arrays: StageArrays
    input_shape: list[int]
    num_classes: int
    class_names: list[str]
    task: Task

    @property
    def n_search_rows(self) -> int:
        """Rows of the sampled training split: one "epoch" of the compute budget is one pass over them."""
        return len(self.arrays.y_train_sampled)


def bench_config(spec: DatasetSpec, seed: int, workdir: Path, extra: tuple[str, ...] = ()) -> PipelineConfig:
    """The spec's config at `seed` with its stores under `workdir` (CPU or CUDA as `auto` picks)."""
    overrides = [*spec.overrides, f"seed={seed}", f"execution.workdir={workdir}", *extra]
    return load_config(spec.config_file, overrides)


def prepare_data(spec: DatasetSpec, config: PipelineConfig) -> BenchData:
    """Stage 1 of stagetune (load, split, preprocess, subsample): every method sees the same arrays."""
    with tempfile.TemporaryDirectory(prefix="bench-data-") as folder:
        sample = run_sample_stage(config, Path(folder))
        arrays = load_stage_arrays(sample)
    if sample.sampled_class_names != sample.class_names:
        raise ValueError("the benchmarks do not support sample.classes (class subsets)")
    config = with_data_defaults(config, sample)  # the peers read the objective stagetune's Stage 1 resolved
    task = task_for(sample, config.training.loss)
    shape = list(sample.input_shape)
    return BenchData(spec, config, arrays, shape, sample.num_classes, list(sample.class_names), task)


def class_shares(labels: np.ndarray) -> list[float]:
    """Share of each class in `labels`."""
    counts = np.bincount(labels)
    return (counts / counts.sum()).round(3).tolist()
