"""Model building, initialisation, optimizers and device resolution."""

import math
from typing import TypeVar

import pytest
import torch
from torch import nn

from schemas.hyperparams import HyperParams
from stagetune.errors import InputError
from stagetune.models import build_model
from stagetune.models.layers import HEAD_INIT_GAIN
from stagetune.training.device import resolve_device
from stagetune.training.optim import build_optimizer

LayerT = TypeVar("LayerT", bound=nn.Module)


def _layers(model: nn.Module, kind: type[LayerT]) -> list[LayerT]:
    return [m for m in model.modules() if isinstance(m, kind)]


@pytest.mark.parametrize(("family", "shape"), [("mlp", [64]), ("mlp", [1, 8, 8]), ("cnn", [1, 8, 8])])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_builtin_families_output_logits_per_class(family: str, shape: list[int], batch_norm: bool) -> None:
    model = build_model(family, HyperParams(batch_norm=batch_norm, depth=2, width=16, channels=4), shape, 10)
    flat = torch.randn(5, math.prod(shape))
    assert model(flat).shape == (5, 10)
    if family == "cnn":
        assert model(flat.reshape(5, *shape)).shape == (5, 10)


def test_mlp_has_depth_hidden_layers_and_optional_batch_norm_and_dropout() -> None:
    plain = build_model("mlp", HyperParams(depth=3, width=32, dropout=0.0, batch_norm=False), [20], 4)
    linears = _layers(plain, nn.Linear)
    assert [(m.in_features, m.out_features) for m in linears] == [(20, 32), (32, 32), (32, 32), (32, 4)]
    assert not _layers(plain, nn.BatchNorm1d)
    assert not _layers(plain, nn.Dropout)

    regularised = build_model("mlp", HyperParams(depth=3, width=32, dropout=0.3, batch_norm=True), [20], 4)
    assert len(_layers(regularised, nn.BatchNorm1d)) == 3
    dropouts = _layers(regularised, nn.Dropout)
    assert len(dropouts) == 3
    assert all(d.p == 0.3 for d in dropouts)


def test_cnn_blocks_double_channels_and_pool_while_the_image_allows() -> None:
    model = build_model("cnn", HyperParams(depth=4, channels=8, batch_norm=True, dropout=0.2), [1, 8, 8], 10)
    convs = _layers(model, nn.Conv2d)
    assert [c.out_channels for c in convs] == [8, 16, 32, 64]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert len(_layers(model, nn.BatchNorm2d)) == 4
    assert len(_layers(model, nn.MaxPool2d)) == 3  # 8 -> 4 -> 2 -> 1, then no room left
    assert len(_layers(model, nn.Dropout)) == 1


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "gelu"])
def test_relu_like_activations_get_he_init(activation: str) -> None:
    model = build_model("mlp", HyperParams(activation=activation, width=512, depth=2), [256], 10, seed=0)
    hidden = _layers(model, nn.Linear)[1]  # 512 -> 512
    assert hidden.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    assert torch.count_nonzero(hidden.bias) == 0


def test_tanh_gets_xavier_init() -> None:
    model = build_model("mlp", HyperParams(activation="tanh", width=512, depth=2), [256], 10, seed=0)
    hidden = _layers(model, nn.Linear)[1]
    bound = (5 / 3) * math.sqrt(6 / (512 + 512))  # xavier_uniform_ with the tanh gain
    assert hidden.weight.abs().max().item() <= bound
    assert hidden.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_output_layer_starts_small_so_logits_are_near_zero() -> None:
    model = build_model("mlp", HyperParams(width=256), [64], 10, seed=0)
    head = _layers(model, nn.Linear)[-1]
    assert head.weight.std().item() == pytest.approx(HEAD_INIT_GAIN / math.sqrt(256), rel=0.1)
    assert torch.count_nonzero(head.bias) == 0
    logits = model.eval()(torch.randn(256, 64))
    assert logits.std().item() < 0.3


def test_seed_makes_builds_reproducible_without_touching_global_rng() -> None:
    before = torch.get_rng_state()
    first = build_model("mlp", HyperParams(), [16], 3, seed=7).state_dict()
    second = build_model("mlp", HyperParams(), [16], 3, seed=7).state_dict()
    other = build_model("mlp", HyperParams(), [16], 3, seed=8).state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["body.1.weight"], other["body.1.weight"])


def test_custom_factory_is_imported_and_called() -> None:
    model = build_model("custom", HyperParams(width=8), [12], 3, import_path="tests.broken_models:correct_mlp")
    assert model(torch.randn(4, 12)).shape == (4, 3)


@pytest.mark.parametrize(
    ("import_path", "fragment"),
    [
        ("tests.no_such_module:factory", "cannot import module"),
        ("tests.broken_models:no_such_factory", "has no attribute"),
        ("tests.broken_models:not_a_module", "not a torch.nn.Module"),
        ("tests.broken_models", "package.module:factory"),
    ],
)
def test_custom_factory_errors_name_the_import_path(import_path: str, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment) as caught:
        build_model("custom", HyperParams(), [12], 3, import_path=import_path)
    assert caught.value.field == "model.import_path"


def test_unknown_family_and_flat_cnn_input_are_input_errors() -> None:
    with pytest.raises(InputError, match="unknown model family"):
        build_model("transformer", HyperParams(), [12], 3)
    with pytest.raises(InputError, match=r"\[C, H, W\]"):
        build_model("cnn", HyperParams(), [64], 10)


@pytest.mark.parametrize(
    ("name", "kind"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)]
)
def test_optimizer_type_and_settings_follow_hyperparams(name: str, kind: type[torch.optim.Optimizer]) -> None:
    hp = HyperParams(optimizer=name, learning_rate=0.02, weight_decay=3e-4, momentum=0.8)
    model = nn.Linear(4, 2)
    optimizer = build_optimizer(hp, model.parameters())
    assert type(optimizer) is kind
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.02
    assert group["weight_decay"] == 3e-4
    assert len(group["params"]) == 2
    if name == "sgd":
        assert group["momentum"] == 0.8
        assert group["nesterov"] is False


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(InputError, match="CUDA is not available") as caught:
            resolve_device(name)
        assert caught.value.field == "execution.device"
