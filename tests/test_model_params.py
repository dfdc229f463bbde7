"""The model's own hyperparameters (model.params / space.params) and the model-family registry."""

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from schemas.config import ModelConfig, PipelineConfig, SanityConfig
from schemas.hyperparams import HyperParams
from schemas.search import HardLimits, Limit, NarrowingSettings, TrialRecord
from schemas.search_space import CategoricalParam, IntParam, SearchSpace
from stagetune.cli import app
from stagetune.config_loading import load_config
from stagetune.errors import InputError
from stagetune.models import build_model, family_names, get_family
from stagetune.models.registry import FAMILIES
from stagetune.sanity.overfit import overfit_hyperparams
from stagetune.search.narrowing import narrow
from stagetune.search.space import (
    hyperparams_from_params,
    logged_hyperparams,
    optuna_params,
    space_violations,
    suggest_hyperparams,
)
from tasks.sample import sample_data

runner = CliRunner()
# The example's model section: its own blocks (int), hidden size (int, log) and norm (categorical).
OWN = {
    "model": {
        "family": "custom",
        "import_path": "examples.custom_model.model:build",
        "params": {"blocks": 2, "hidden_size": 64, "norm": "layer"},
    },
    "space": {
        "params": {
            "blocks": {"kind": "int", "low": 0, "high": 4},
            "hidden_size": {"kind": "int", "low": 16, "high": 256, "scale": "log"},
            "norm": {"kind": "categorical", "choices": ["layer", "batch", "none"]},
        }
    },
}
CUSTOM = PipelineConfig.model_validate(OWN)


def _with(changes: dict[str, Any]) -> dict[str, Any]:
    """OWN with `changes` (dotted keys; None removes the key)."""
    raw: dict[str, Any] = yaml.safe_load(yaml.safe_dump(OWN))
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return raw


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"space.params.blocks": None}, "model.params.blocks"),  # a baseline without a range
        ({"model.params.blocks": None}, "space.params.blocks"),  # a range without a baseline
        ({"model.params.blocks": 9}, "model.params.blocks"),  # outside [0, 4]
        ({"model.params.blocks": 2.5}, "model.params.blocks"),  # not an integer
        ({"model.params.blocks": "two"}, "model.params.blocks"),
        ({"model.params.norm": "group"}, "model.params.norm"),  # not among the choices
        ({"model.params.hidden_size": True}, "model.params.hidden_size"),  # a boolean is not a number
        ({"space.params.hidden_size.low": 0}, "space.params.hidden_size"),  # log range from 0
        ({"space.params.lr2": {"kind": "float", "low": 0.0, "high": 1.0, "scale": "log"}}, "space.params.lr2"),
        ({"space.params.blocks.low": 5}, "space.params.blocks"),  # low > high
        ({"space.params.width": {"kind": "int", "low": 1, "high": 3}, "model.params.width": 2}, "space.params"),
        ({"space.params.my-blocks": {"kind": "int", "low": 1, "high": 3}}, "space.params"),  # not an identifier
        ({"model.params.my-blocks": 1}, "model.params"),
        ({"refine.narrowing.hard_limits.params.depth": {"low": 0, "high": 3}}, "hard_limits.params.depth"),
        ({"model.baseline.params": {"blocks": 2}}, "model.baseline.params"),  # baselines go in model.params
        ({"model.family": "mlp", "model.import_path": None}, "model.params"),  # mlp reads no own params
        ({"model.family": "transformer", "model.import_path": None}, "model.family"),
        ({"model.uses": ["width", "heads"]}, "model.uses"),
        ({"space.channels": {"kind": "categorical", "choices": [16, 24]}}, "space.channels"),
        ({"space.channels": {"kind": "int", "low": 16, "high": 64}}, "space.channels"),
        ({"model.baseline.channels": 24}, "model.baseline.channels"),
    ],
)
def test_bad_params_exit_2_naming_the_field(tmp_path: Path, changes: dict[str, Any], field: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_with(changes)), encoding="utf-8")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    message = result.output[result.output.find("error in ") :].strip()
    assert message.startswith("error in "), result.output
    assert field in message, message
    assert "Traceback" not in result.output


def test_the_example_config_is_valid_and_its_factory_imports() -> None:
    config = load_config(Path(__file__).resolve().parents[1] / "examples/custom_model/config.yaml")
    assert dict(config.model.params) == {"blocks": 2, "hidden_size": 64, "norm": "layer"}
    assert config.model.baseline_hyperparams.params == config.model.params
    assert config.model.baseline.params == {}


def _asked(config: PipelineConfig, n: int) -> list[tuple[optuna.Trial, HyperParams]]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return [
        (trial, suggest_hyperparams(trial, config.space, config.model)) for trial in (study.ask() for _ in range(n))
    ]


def test_own_params_are_sampled_in_their_ranges_and_unused_builtins_are_not() -> None:
    asked = _asked(CUSTOM, 40)
    for trial, hp in asked:
        assert {"params.blocks", "params.hidden_size", "params.norm"} <= set(trial.params)
        # custom without model.uses reads no built-in architecture field: none is sampled.
        assert {"width", "depth", "channels", "dropout", "activation", "batch_norm"}.isdisjoint(trial.params)
        assert 0 <= hp.params["blocks"] <= 4
        assert 16 <= hp.params["hidden_size"] <= 256
        assert hp.params["norm"] in {"layer", "batch", "none"}
        assert (hp.width, hp.depth, hp.channels) == (128, 2, 32)  # the baseline's
        with pytest.raises(TypeError, match="read-only"):
            hp.params["blocks"] = 1  # type: ignore[index]
    assert {hp.params["norm"] for _, hp in asked} == {"layer", "batch", "none"}
    assert len({hp.params["blocks"] for _, hp in asked}) == 5
    hidden = asked[0][0].distributions["params.hidden_size"]
    assert isinstance(hidden, optuna.distributions.IntDistribution)
    assert hidden.log


def test_a_trial_is_rebuilt_from_its_logged_params_alone() -> None:
    for trial, hp in _asked(CUSTOM, 10):
        assert optuna_params(hp, CUSTOM.space, CUSTOM.model) == trial.params
        assert hyperparams_from_params(trial.params, CUSTOM.space, CUSTOM.model) == hp
        logged = logged_hyperparams(hp, CUSTOM.model)
        assert {k: v for k, v in logged.items() if k.startswith("params.")} == {
            f"params.{k}": v for k, v in hp.params.items()
        }
        assert "width" not in logged  # unused by this family: not logged either
    outside = HyperParams(params={"blocks": 7, "hidden_size": 64, "norm": "layer"})
    assert space_violations(outside, CUSTOM.space, CUSTOM.model) == ["params.blocks=7 is outside params.blocks [0, 4]"]


@pytest.mark.parametrize(("family", "absent"), [("mlp", {"channels"}), ("cnn", {"width"})])
def test_builtin_families_do_not_sample_what_they_do_not_read(family: str, absent: set[str]) -> None:
    config = PipelineConfig.model_validate(
        {"model": {"family": family}, "space": {"width": {"kind": "int", "low": 8, "high": 64}}}
    )
    for trial, _ in _asked(config, 5):
        assert absent.isdisjoint(trial.params)


def test_custom_samples_the_builtins_it_declares_in_uses() -> None:
    config = PipelineConfig.model_validate(_with({"model.uses": ["dropout", "width"]}))
    [(trial, _)] = _asked(config, 1)
    assert {"dropout", "width"} <= set(trial.params)
    assert "depth" not in trial.params


def _records(config: PipelineConfig, n: int, best: dict[str, Any]) -> list[TrialRecord]:
    """`n` random trials; the one whose params equal `best` gets the best (lowest) value."""
    records = []
    for trial, hp in _asked(config, n):
        value = 1.0 + trial.number / n
        records.append(TrialRecord(number=trial.number, state="COMPLETE", value=value, hyperparams=hp, params={}))
    winner = records[0].hyperparams.model_copy(update={"params": best})
    records[0] = records[0].model_copy(update={"hyperparams": winner, "value": 0.0})
    return records


def test_own_params_narrow_like_builtins_and_widen_at_a_boundary_keeping_their_sign() -> None:
    records = _records(CUSTOM, 30, {"blocks": 0, "hidden_size": 200, "norm": "none"})
    settings = NarrowingSettings(top_k=3)
    space, report = narrow(CUSTOM.space, records, "minimize", settings, CUSTOM.model)
    changes = {c.name: c for c in report.changes}
    assert {"params.blocks", "params.hidden_size", "params.norm"} <= set(changes)
    # blocks: best at the lower bound 0 -> widened, but never below 0 (no hard limit given: the sign is kept).
    assert space.params["blocks"] == IntParam(low=0, high=space.params["blocks"].high)  # type: ignore[union-attr]
    assert "sits at the lower boundary" in changes["params.blocks"].reason
    hidden = space.params["hidden_size"]
    assert isinstance(hidden, IntParam)
    assert hidden.scale == "log"
    assert (hidden.low, hidden.high) != (16, 256)
    assert hidden.low <= 200 <= hidden.high
    assert changes["params.norm"].action in {"choices_reduced", "kept"}
    for record in sorted(records, key=lambda r: r.value or 0)[:3]:
        assert space_violations(record.hyperparams, space, CUSTOM.model) == []


def test_a_hard_limit_of_an_own_param_bounds_its_widening() -> None:
    config = PipelineConfig.model_validate(
        _with({"space.params.blocks": {"kind": "int", "low": 2, "high": 6}, "model.params.blocks": 3})
    )
    records = _records(config, 30, {"blocks": 6, "hidden_size": 64, "norm": "layer"})
    free, _ = narrow(config.space, records, "minimize", NarrowingSettings(top_k=3), config.model)
    limits = HardLimits(params={"blocks": Limit(low=1, high=7)})
    capped, report = narrow(
        config.space, records, "minimize", NarrowingSettings(top_k=3, hard_limits=limits), config.model
    )
    assert free.params["blocks"].high == 8  # type: ignore[union-attr]  # 6 + half the old width
    assert capped.params["blocks"].high == 7  # type: ignore[union-attr]
    assert "params.blocks.high: 8 clipped to the hard limit 7" in report.hard_limits_hit


def test_a_hard_limit_never_cuts_into_the_old_range() -> None:
    # depth's hard limit starts at 1, but a space from 0 (the linear model) keeps 0 when the best trial is there.
    space = SearchSpace(depth=IntParam(low=0, high=3), optimizer=CategoricalParam(choices=["adamw"]))
    records = _records(PipelineConfig.model_validate({"space": space.model_dump()}), 20, {})
    best = records[0].hyperparams.model_copy(update={"depth": 0})
    records[0] = records[0].model_copy(update={"hyperparams": best})
    new, _ = narrow(space, records, "minimize", NarrowingSettings(top_k=3))
    assert new.depth.low == 0  # type: ignore[union-attr]


def test_registry_names_and_errors() -> None:
    assert family_names() == ["cnn", "custom", "mlp"]
    assert set(FAMILIES) == set(family_names())
    with pytest.raises(InputError, match="use one of cnn, custom, mlp") as caught:
        get_family("rnn")
    assert caught.value.field == "model.family"


def test_depth_zero_is_a_linear_model() -> None:
    mlp = build_model("mlp", HyperParams(depth=0), [4, 5], 3, seed=0)
    assert [type(m) for m in mlp.modules()][1:] == [nn.Sequential, nn.Flatten, nn.Linear]
    assert sum(p.numel() for p in mlp.parameters()) == 20 * 3 + 3
    cnn = build_model("cnn", HyperParams(depth=0), [3, 7, 5], 4, seed=0)
    assert not [m for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    assert sum(p.numel() for p in cnn.parameters()) == 3 * 7 * 5 * 4 + 4  # a linear model on the pixels
    assert cnn(torch.randn(2, 3 * 7 * 5)).shape == (2, 4)


@pytest.mark.parametrize("shape", [[3, 32, 32], [1, 17, 9], [4, 1, 1], [2, 64, 3]])
def test_cnn_takes_images_of_any_size_and_channel_count(shape: list[int]) -> None:
    hp = HyperParams(depth=3, channels=8, batch_norm=True)
    model = build_model("cnn", hp, shape, 5, seed=0)
    assert model(torch.randn(2, *shape)).shape == (2, 5)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32]
    assert convs[0].in_channels == shape[0]
    assert any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.modules())


def test_a_cnn_on_a_flat_table_is_refused_at_stage_1(tmp_path: Path) -> None:
    # Digits with a few pixel columns picked is a flat table.
    config = load_config(None, ["model.family=cnn", "data.features=[pixel_0_2, pixel_0_3, pixel_1_2]"])
    with pytest.raises(InputError, match="use mlp, or an image source") as caught:
        sample_data.fn(config, tmp_path)
    assert caught.value.field == "model.family"
    digits = load_config(None, ["model.family=cnn"])
    assert sample_data.fn(digits, tmp_path).input_shape == [1, 8, 8]


def test_the_sanity_gate_overfits_with_the_familys_variant() -> None:
    cfg, hp = SanityConfig(), HyperParams(dropout=0.3, batch_norm=True, channels=16, params={"blocks": 3})
    mlp = overfit_hyperparams("mlp", hp, cfg)
    assert (mlp.width, mlp.depth, mlp.batch_norm, mlp.dropout) == (cfg.overfit_width, cfg.overfit_depth, False, 0.0)
    cnn = overfit_hyperparams("cnn", hp, cfg)
    assert (cnn.channels, cnn.depth, cnn.batch_norm) == (64, cfg.overfit_depth, False)
    custom = overfit_hyperparams("custom", hp, cfg)
    assert (custom.width, custom.batch_norm, custom.params, custom.dropout) == (128, True, {"blocks": 3}, 0.0)
    assert all(hasattr(family, "overfit_changes") for family in FAMILIES.values())


def test_the_example_factory_is_shaped_by_its_params() -> None:
    hp = HyperParams(params={"blocks": 3, "hidden_size": 32, "norm": "batch"})
    model = build_model("custom", hp, [64], 10, "examples.custom_model.model:build", seed=0)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 + 2 * 3 + 1
    assert linears[0].out_features == 32
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 3 + 1
    assert model(torch.randn(4, 64)).shape == (4, 10)
    # The initial loss is close to ln(10), as the sanity gate requires.
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model.eval()(torch.randn(256, 64)), torch.randint(0, 10, (256,)))
    assert abs(float(loss) - math.log(10)) < 0.1
    assert isinstance(ModelConfig.model_validate(OWN["model"]).params, dict)
