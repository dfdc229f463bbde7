"""Image data get CNN-sized budgets and ranges where the config leaves them unset; tables keep theirs."""

from pathlib import Path

import pytest

from schemas.config import PipelineConfig
from schemas.results import SampleResult
from schemas.search_space import CategoricalParam, IntParam
from stagetune.config_loading import load_config
from stagetune.data.defaults import (
    apply_data_defaults,
    resolve_data_defaults,
    resolve_sample_defaults,
    with_data_defaults,
)
from stagetune.data.image_defaults import (
    COARSE_STEPS,
    depth_range,
    image_batch_sizes,
    is_user_set,
    receptive_field,
    resolve_image_defaults,
)
from stagetune.data.stage import run_sample_stage
from stagetune.examples_data import make_shapes

SHAPES_FLAGS = ["data.source=/tmp/no-such-folder-needed/", "model.family=cnn"]


def _sample(input_shape: list[int], source_kind: str = "image_folder", n_train: int = 840) -> SampleResult:
    """A Stage 1 result as an image folder of 4 balanced classes would store it (no files behind it)."""
    counts = dict.fromkeys("abcd", n_train // 4)
    return SampleResult(
        source="x",
        source_kind=source_kind,
        data_path="x.npz",
        fingerprint="f",
        sampled_fingerprint="s",
        class_names=list(counts),
        num_classes=4,
        input_shape=input_shape,
        feature_names=[],
        n_rows=n_train * 10 // 7,
        n_train=n_train,
        n_val=n_train * 3 // 14,
        n_test=n_train * 3 // 14,
        n_train_sampled=n_train,
        n_val_sampled=n_train * 3 // 14,
        class_counts_train=counts,
        class_counts_sampled=counts,
        class_counts_rebalanced=counts,
        rebalance="none",
    )


def test_receptive_field_and_depth_range_follow_the_image_size() -> None:
    assert [receptive_field(d) for d in range(4)] == [1, 4, 10, 22]
    assert depth_range(32, 32) == (3, 4)  # 22 px >= 16; 32 -> 2x2 after 4 pools
    assert depth_range(16, 16) == (2, 3)  # the range configs/shapes.yaml sets by hand for 16 px
    assert depth_range(8, 8) == (1, 2)
    assert depth_range(2, 2) == (1, 1)
    assert depth_range(64, 32) == (3, 4)  # the shorter side decides


def test_batch_sizes_leave_every_epoch_enough_steps() -> None:
    assert image_batch_sizes(840) == [16, 32]  # 840 / 32 = 26 steps; 840 / 64 = 13 < 20
    assert image_batch_sizes(50_000) == [16, 32, 64, 128, 256]
    assert image_batch_sizes(40) == [16, 32]  # never fewer than two choices


def test_an_image_folder_on_embedded_defaults_gets_cnn_budgets() -> None:
    config = load_config(None, [*SHAPES_FLAGS, "execution.device=cpu"])
    resolved = with_data_defaults(config, _sample([3, 32, 32]))
    assert resolved.space.depth == CategoricalParam(choices=[0, 3, 4])  # a linear model, or CNNs that see the image
    assert resolved.model.baseline.depth == 3
    assert resolved.space.batch_size == CategoricalParam(choices=[16, 32])
    assert resolved.model.baseline.batch_size == 32
    assert resolved.coarse.train_fraction == 1.0
    assert resolved.coarse.epochs * 27 >= COARSE_STEPS  # 840 rows / 32 = 27 steps per epoch
    assert resolved.refine.epochs == 2 * resolved.coarse.epochs
    # On CPU the trial counts and channel counts shrink.
    assert (resolved.coarse.n_trials, resolved.refine.n_trials) == (8, 4)
    assert resolved.space.channels == CategoricalParam(choices=[16, 32])
    assert resolved.refine.narrowing.top_k <= resolved.coarse.n_trials
    # The tabular settings the images do not touch stay as they were.
    assert resolved.space.learning_rate == config.space.learning_rate
    assert resolved.final == config.final.model_copy(update={"champion_metric": "accuracy"})


def test_on_cuda_the_trial_counts_and_channels_stay() -> None:
    settings, _ = resolve_image_defaults(load_config(None, SHAPES_FLAGS), [3, 32, 32], "image_folder", 840, "cuda")
    assert {"coarse.epochs", "space.depth"} <= set(settings)
    assert not {"coarse.n_trials", "refine.n_trials", "space.channels"} & set(settings)


def test_every_chosen_setting_comes_with_its_reason_and_is_stored() -> None:
    config = load_config(None, SHAPES_FLAGS)
    defaults = resolve_sample_defaults(config, _sample([3, 32, 32]))
    keys = [reason.split(" -> ", 1)[0] for reason in defaults.reasons]
    assert set(defaults.settings) <= set(keys)
    assert "coarse.epochs" in defaults.settings
    assert any("TUNING-RULES.md" in reason for reason in defaults.reasons)
    stored = SampleResult.model_validate_json(
        _sample([3, 32, 32]).model_copy(update={"defaults": defaults}).model_dump_json()
    )
    # A resumed run (or a joining worker) re-applies the stored choice even where its config now differs.
    assert with_data_defaults(config, stored) == with_data_defaults(load_config(None, SHAPES_FLAGS), stored)


@pytest.mark.parametrize(
    ("flag", "key", "value"),
    [
        ("coarse.epochs=3", "coarse.epochs", 3),
        ("coarse.n_trials=20", "coarse.n_trials", 20),
        ("coarse.train_fraction=0.5", "coarse.train_fraction", 0.5),
        ("model.baseline.depth=2", "model.baseline.depth", 2),
    ],
)
def test_a_setting_the_user_gave_wins(flag: str, key: str, value: object) -> None:
    config = load_config(None, [*SHAPES_FLAGS, flag])
    settings, _ = resolve_image_defaults(config, [3, 32, 32], "image_folder", 840, "cpu")
    assert key not in settings
    resolved = with_data_defaults(config, _sample([3, 32, 32]))
    section, *rest = key.split(".")
    node = getattr(resolved, section)
    for part in rest:
        node = getattr(node, part)
    assert node == value


def test_a_range_given_in_part_counts_as_given(tmp_path: Path) -> None:
    path = tmp_path / "images.yaml"
    path.write_text("space:\n  depth: {low: 1, high: 2}\nmodel:\n  baseline: {batch_size: 128}\n")
    config = load_config(path, SHAPES_FLAGS)
    assert is_user_set(config, "space.depth")
    assert is_user_set(config, "model.baseline.batch_size")
    assert not is_user_set(config, "model.baseline.depth")
    assert not is_user_set(config, "coarse.epochs")
    resolved = with_data_defaults(config, _sample([3, 32, 32]))
    assert resolved.space.depth == IntParam(low=1, high=2)
    assert resolved.model.baseline.batch_size == 128
    # Not given, but its image default follows the image depth range, which the user chose: left as it was.
    assert resolved.model.baseline.depth == config.model.baseline.depth
    assert resolved.coarse.train_fraction == 1.0  # not given: the image default


def test_load_config_remembers_what_was_given_and_changes_no_value(tmp_path: Path) -> None:
    overrides = ["space.learning_rate.adam.low=1e-4", "coarse.epochs=4", "model.family=cnn"]
    config = load_config("configs/shapes.yaml", overrides)
    assert config.coarse.model_fields_set == {"n_trials", "epochs", "sampler"}
    assert "learning_rate" in config.space.model_fields_set
    assert "weight_decay" not in config.space.model_fields_set
    assert config.space.learning_rate["adam"].low == 1e-4  # merged into the default ranges
    assert set(config.space.learning_rate) == {"adam", "adamw", "sgd"}
    assert config.model_dump() == PipelineConfig.model_validate(config.model_dump()).model_dump()


@pytest.mark.parametrize("source_kind", ["table", "image_folder"])
def test_tables_and_flat_samples_keep_the_embedded_defaults(source_kind: str) -> None:
    embedded = load_config(None)
    digits_sample = _sample([64], source_kind="table", n_train=1257)
    assert resolve_sample_defaults(embedded, digits_sample).settings == {}
    # builtin:digits as 8x8 images for a CNN is an in-memory table: the budgets it was tuned with stay.
    digits_cnn = load_config(None, ["model.family=cnn"])
    assert resolve_sample_defaults(digits_cnn, _sample([1, 8, 8], source_kind="table")).settings == {}
    # Flat samples from any source are no images.
    flat = resolve_image_defaults(embedded, [64], source_kind, 1257, "cpu")
    assert flat == ({}, [])
    # What the stages run under is what the labels alone resolved before image defaults existed.
    from_labels = resolve_data_defaults(embedded, "classification", digits_sample.class_counts_train, 1257)
    assert with_data_defaults(embedded, digits_sample) == apply_data_defaults(embedded, from_labels)
    assert with_data_defaults(embedded, digits_sample).coarse == embedded.coarse


def test_stage_one_of_an_image_folder_stores_the_image_defaults(tmp_path: Path) -> None:
    folder = tmp_path / "shapes"
    make_shapes(folder, per_class=12, size=16, seed=1)
    config = load_config(None, [f"data.source={folder}/", "model.family=cnn", "execution.device=cpu"])
    sample = run_sample_stage(config, tmp_path / "out")
    assert sample.defaults is not None
    assert sample.defaults.settings["space.depth"] == {"kind": "categorical", "choices": [0, 2, 3]}
    assert sample.defaults.settings["coarse.train_fraction"] == 1.0
