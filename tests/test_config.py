"""Config validation: every section's valid and invalid values, overrides, file errors."""

import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.config import PipelineConfig
from schemas.search_space import CategoricalParam, FloatParam, IntParam
from stagetune.config_loading import load_config, merge, parse_override
from stagetune.errors import InputError

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_example_configs_are_valid(path: Path) -> None:
    config = load_config(path)
    assert config.name
    source = config.data.source
    if not source.startswith("builtin:"):  # written offline by the `stagetune make-example` its header names
        folder = source.rstrip("/") if config.data.source_kind == "image_folder" else str(Path(source).parent)
        assert f"stagetune make-example {path.stem} {folder}" in path.read_text()


def test_example_configs_cover_the_three_bundled_problems() -> None:
    sources = {load_config(p).data.source for p in CONFIGS}
    assert {"builtin:digits", "builtin:breast_cancer", "builtin:synthetic_imbalanced"} <= sources


def test_defaults_follow_the_practitioner_rules() -> None:
    space = PipelineConfig().space
    for optimizer in space.optimizer.choices:
        assert space.learning_rate[optimizer].scale == "log"
    # SGD gets higher rates than the Adam family (TUNING-RULES: SGD 1e-2..1e-1, Adam 1e-3..1e-2).
    assert space.learning_rate["sgd"].low > space.learning_rate["adam"].low
    assert space.learning_rate["adam"].low <= 1e-3 <= 1e-2 <= space.learning_rate["adam"].high
    assert space.learning_rate["sgd"].low <= 1e-2
    assert space.learning_rate["sgd"].high >= 1e-1
    assert isinstance(space.weight_decay, FloatParam)
    assert space.weight_decay.scale == "log"
    assert isinstance(space.dropout, FloatParam)
    assert (space.dropout.low, space.dropout.high, space.dropout.scale) == (0.0, 0.5, "linear")
    assert isinstance(space.batch_size, CategoricalParam)
    assert all(int(b) % 32 == 0 for b in space.batch_size.choices)
    assert {"adam", "adamw", "sgd"} == set(space.optimizer.choices)
    config = PipelineConfig()
    assert config.training.grad_clip_norm == 5.0
    assert config.final.lr_plateau_factor == 0.5
    assert config.model.baseline.momentum == 0.9


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("name=has space", "name"),
        ("seed=-1", "seed"),
        ("data.source=data.txt", "data.source"),
        ("data.source=builtin:mnist", "data.source"),
        ("data.source=rows.csv", "data.target"),
        ("data.val_fraction=0.6", "data.val_fraction"),
        ("data.synthetic.class_weights=[0.5, 0.6]", "data.synthetic"),
        ("data.synthetic.n_informative=50", "data.synthetic"),
        ("sample.fraction=0", "sample.fraction"),
        ("sample.fraction=1.5", "sample.fraction"),
        ("sample.max_rows=-5", "sample.max_rows"),
        ("sample.rebalance=smote", "sample.rebalance"),
        ("sample.classes=[a]", "sample.classes"),
        ("model.family=transformer", "model.family"),
        ("model.family=custom", "model"),
        ("model.import_path=pkg.mod:factory", "model"),
        ("model.baseline.learning_rate=0", "model.baseline.learning_rate"),
        ("model.baseline.dropout=1.0", "model.baseline.dropout"),
        ("model.baseline.optimizer=rmsprop", "model.baseline.optimizer"),
        ("space.weight_decay.low=0", "space.weight_decay"),
        ("space.dropout.low=0.6", "space.dropout"),
        ("space.learning_rate.adam.scale=cubic", "space.learning_rate.adam.scale"),
        ("space.batch_size.choices=[]", "space.batch_size.choices"),
        ("space.batch_size.choices=[32, 32]", "space.batch_size"),
        ("space.optimizer.choices=[rmsprop]", "space"),
        ("space.width={kind: int, low: 0, high: 8, scale: log}", "space.width"),
        ("training.grad_clip_norm=0", "training.grad_clip_norm"),
        ("sanity.overfit_target_acc=1.5", "sanity.overfit_target_acc"),
        ("sanity.lr_range_min=10", "sanity"),
        ("coarse.n_trials=0", "coarse.n_trials"),
        ("coarse.sampler=grid", "coarse.sampler"),
        ("refine.epochs=0", "refine.epochs"),
        ("refine.pruner=asha", "refine.pruner"),
        ("refine.narrowing.top_k=100", "refine.narrowing.top_k"),
        ("refine.warm_start=50", "refine.warm_start"),
        ("refine.narrowing.margin=-1", "refine.narrowing.margin"),
        ("search.objective=val_f1", "search.objective"),
        ("final.max_epochs=0", "final.max_epochs"),
        ("final.lr_plateau_factor=1.5", "final.lr_plateau_factor"),
        ("tracking.experiment=", "tracking.experiment"),
        ("execution.device=tpu", "execution.device"),
        ("tracking.uri=http://me:pw@mlflow:5000", "tracking.uri"),
        ("search.storage=postgresql+psycopg://me:pw@db/optuna", "search.storage"),
        ("execution.concurrency=0", "execution.concurrency"),
        ("unknown_section=1", "unknown_section"),
        ("coarse.n_trails=5", "coarse.n_trails"),
    ],
)
def test_invalid_values_name_their_field(override: str, field: str) -> None:
    with pytest.raises(InputError) as caught:
        load_config(None, [override])
    assert caught.value.field == field
    assert field.split(".")[-1] in caught.value.message


def test_cross_field_error_names_the_field() -> None:
    with pytest.raises(InputError) as caught:
        load_config(None, ["coarse.n_trials=3", "refine.narrowing.top_k=5"])
    assert caught.value.field == "refine.narrowing.top_k"


def test_cnn_needs_a_source_that_can_hold_images() -> None:
    # A table other than digits never holds images: refused with the config. Sources that may hold them
    # are checked at Stage 1 against the shape found (test_model_params::test_a_cnn_on_a_flat_table_...).
    assert load_config(None, ["model.family=cnn"]).model.family == "cnn"
    with pytest.raises(InputError, match="image-shaped data"):
        load_config(None, ["model.family=cnn", "data.source=builtin:wine"])


def test_overrides_are_typed_and_merge_into_defaults() -> None:
    config = load_config(
        None,
        [
            "coarse.n_trials=7",
            "space.weight_decay.low=1e-5",
            "sample.classes=[a, b]",
            "space.batch_norm.choices=[false]",
            "space.width={kind: categorical, choices: [64, 128]}",
        ],
    )
    assert config.coarse.n_trials == 7
    assert config.space.weight_decay == FloatParam(low=1e-5, high=1e-1, scale="log")
    assert config.sample.classes == ["a", "b"]
    assert config.space.batch_norm.choices == [False]
    assert config.space.width == CategoricalParam(choices=[64, 128])


def test_file_sections_merge_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("coarse: {epochs: 2}\nspace:\n  dropout: {high: 0.3}\n")
    config = load_config(path, ["coarse.epochs=5"])
    assert config.coarse.epochs == 5  # --set wins over the file
    assert config.coarse.n_trials == PipelineConfig().coarse.n_trials
    assert config.space.dropout == FloatParam(low=0.0, high=0.3)


def test_merge_replaces_lists_and_changed_kinds() -> None:
    base = {"a": {"kind": "int", "low": 1, "high": 2}, "b": [1, 2]}
    assert merge(base, {"a": {"kind": "categorical", "choices": [3]}, "b": [9]}) == {
        "a": {"kind": "categorical", "choices": [3]},
        "b": [9],
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [("a=1", 1), ("a.b=0.5", 0.5), ("a=true", True), ("a=[1, x]", [1, "x"]), ("a=hello", "hello"), ("a=", "")],
)
def test_parse_override(text: str, expected: object) -> None:
    assert parse_override(text)[1] == expected


@pytest.mark.parametrize("text", ["noequals", "=1", "a..b=1", "a=[unclosed"])
def test_malformed_overrides(text: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_override(text)
    assert caught.value.field == "--set"


def test_override_below_a_value_is_refused() -> None:
    with pytest.raises(InputError, match="n_trials"):
        load_config(None, ["coarse.n_trials.x=1"])


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("coarse: {n_trials: 3\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(InputError, match="mapping"):
        load_config(listing)


def test_config_is_frozen() -> None:
    config = PipelineConfig()
    with pytest.raises(ValidationError):
        config.seed = 3  # type: ignore[misc]


def test_param_bounds() -> None:
    with pytest.raises(ValidationError, match="swap"):
        IntParam(low=5, high=1)
    with pytest.raises(ValidationError, match="log"):
        FloatParam(low=-1.0, high=1.0, scale="log")
    assert math.isclose(FloatParam(low=1e-4, high=1e-2, scale="log").low, 1e-4)
