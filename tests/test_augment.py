"""Training-batch augmentation: images, keypoint targets in standardised and original units, seeding,
training batches only, and the augment: settings checked against the data."""

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from schemas.config import AugmentConfig, ModelConfig, PipelineConfig
from schemas.hyperparams import HyperParams
from schemas.search_space import CategoricalParam, SearchSpace
from stagetune.data.augment import (
    BatchAugmenter,
    CoordinateTargets,
    PixelScaling,
    build_augmenter,
    check_augment_settings,
    move_coordinates,
    per_pixel_warning,
    pixels_of,
    shift_images,
)
from stagetune.errors import InputError
from stagetune.search.space import hyperparams_from_params, optuna_params, suggest_hyperparams
from stagetune.task.classification import ClassificationTask
from stagetune.task.regression import RegressionTask
from stagetune.training.loaders import TrainFeed, make_eval_loader, make_train_loader
from stagetune.training.loop import fit

NAMES = ["left_eye_x", "left_eye_y", "right_eye_x", "right_eye_y", "nose_x", "nose_y"]
MEAN = np.array([-0.3, -0.1, 0.3, -0.1, 0.0, 0.2])
STD = np.array([0.1, 0.2, 0.15, 0.25, 0.05, 0.1])
POINTS = np.array([[-0.5, -0.2, 0.4, -0.1, 0.05, 0.3], [-0.25, 0.1, 0.35, 0.0, -0.1, 0.4]])


def keypoints() -> CoordinateTargets:
    return CoordinateTargets.of(NAMES, MEAN, STD, [("left_eye", "right_eye")])


def standardised(values: np.ndarray) -> torch.Tensor:
    return torch.as_tensor((values - MEAN) / STD, dtype=torch.float64)


def original(z: torch.Tensor) -> np.ndarray:
    return z.numpy() * STD + MEAN


def test_flip_mirrors_x_and_swaps_pairs_in_original_and_standardised_units() -> None:
    zero = torch.zeros(2, dtype=torch.int64)
    flipped = move_coordinates(standardised(POINTS), keypoints(), (1, 8, 8), torch.tensor([True, False]), zero, zero)
    # Row 0 flipped: the left eye is the mirrored right eye (x -> -x) and vice versa; the nose mirrors in place.
    expected = np.array([-0.4, -0.1, 0.5, -0.2, -0.05, 0.3])
    np.testing.assert_allclose(original(flipped)[0], expected, atol=1e-12)
    # The same in the standardised space the model is trained in, written out for two columns.
    assert float(flipped[0, 0]) == pytest.approx((-0.4 - MEAN[0]) / STD[0])  # the mirrored right_eye_x
    assert float(flipped[0, 2]) == pytest.approx((0.5 - MEAN[2]) / STD[2])
    np.testing.assert_allclose(original(flipped)[1], POINTS[1], atol=1e-12)  # row 1 not flipped


def test_flipping_twice_is_the_identity() -> None:
    flip, zero = torch.tensor([True, True]), torch.zeros(2, dtype=torch.int64)
    z = standardised(POINTS)
    twice = move_coordinates(
        move_coordinates(z, keypoints(), (1, 8, 8), flip, zero, zero), keypoints(), (1, 8, 8), flip, zero, zero
    )
    torch.testing.assert_close(twice, z)
    images = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 60)
    augmenter = BatchAugmenter(AugmentConfig(flip_probability=1.0), seed=0, image_shape=(3, 4, 5))
    once, _ = augmenter(images, torch.zeros(2))
    again, _ = augmenter(once, torch.zeros(2))
    assert not torch.equal(once, images)
    torch.testing.assert_close(again, images)


@pytest.mark.parametrize("flat", [True, False])
def test_image_flip_mirrors_columns_flat_and_4d(flat: bool) -> None:
    images = torch.arange(2 * 2 * 3 * 4, dtype=torch.float32).reshape(2, 2, 3, 4)  # asymmetric in every axis
    batch = images.reshape(2, -1) if flat else images
    out, labels = BatchAugmenter(AugmentConfig(flip_probability=1.0), 0, (2, 3, 4))(batch, torch.tensor([3, 5]))
    assert out.shape == batch.shape
    assert torch.equal(out.reshape(2, 2, 3, 4), images.flip(-1))
    assert out.reshape(2, 2, 3, 4)[0, 1, 2, 0] == images[0, 1, 2, 3]
    assert labels.tolist() == [3, 5]  # classification labels unchanged


def test_flip_of_standardised_pixels_is_done_in_pixel_units() -> None:
    # Digits-style inputs: each pixel standardised by its own mean and std; the flip must move pixel values.
    rng = np.random.default_rng(0)
    raw = torch.as_tensor(rng.integers(0, 17, (3, 1, 4, 4)), dtype=torch.float32)
    mean, scale = rng.uniform(0, 8, 16), rng.uniform(0.5, 4, 16)
    scale[5] = 0.0  # a constant pixel: StandardScaler leaves it unscaled (its stored scale is 1; 0 is guarded)
    safe = torch.as_tensor(np.where(scale == 0, 1.0, scale), dtype=torch.float32).reshape(1, 4, 4)
    fed = ((raw - torch.as_tensor(mean, dtype=torch.float32).reshape(1, 4, 4)) / safe).reshape(3, 16)
    pixels = PixelScaling(tuple(mean), tuple(scale))
    out, _ = BatchAugmenter(AugmentConfig(flip_probability=1.0), 0, (1, 4, 4), pixels)(fed, torch.zeros(3))
    back = out.reshape(3, 1, 4, 4) * safe + torch.as_tensor(mean, dtype=torch.float32).reshape(1, 4, 4)
    torch.testing.assert_close(back, raw.flip(-1))


def test_shift_moves_content_and_pads() -> None:
    image = torch.arange(1, 10, dtype=torch.float32).reshape(1, 1, 3, 3)
    right = shift_images(image, torch.tensor([1]), torch.tensor([0]), 1, "zeros")
    assert right[0, 0].tolist() == [[0, 1, 2], [0, 4, 5], [0, 7, 8]]
    up = shift_images(image, torch.tensor([0]), torch.tensor([-1]), 2, "replicate")
    assert up[0, 0].tolist() == [[4, 5, 6], [7, 8, 9], [7, 8, 9]]
    left = shift_images(image, torch.tensor([-1]), torch.tensor([0]), 1, "reflect")
    assert left[0, 0].tolist() == [[2, 3, 2], [5, 6, 5], [8, 9, 8]]


def test_keypoints_follow_the_image_through_flips_and_shifts() -> None:
    # One bright pixel per image at a keypoint; after augmentation the target must name the bright pixel.
    height, width, size = 6, 8, 64
    rng = np.random.default_rng(1)
    rows, cols = rng.integers(1, height - 1, size), rng.integers(1, width - 1, size)
    images = torch.zeros(size, 1, height, width)
    images[torch.arange(size), 0, torch.as_tensor(rows), torch.as_tensor(cols)] = 1.0
    names, mean, std = ["tip_x", "tip_y"], [0.1, -0.2], [0.5, 0.4]
    coords = np.stack([(2 * cols + 1) / width - 1, (2 * rows + 1) / height - 1], axis=1)
    targets = torch.as_tensor((coords - mean) / std, dtype=torch.float32)
    settings = AugmentConfig(flip_probability=0.5, max_shift=1)
    augmenter = BatchAugmenter(settings, 3, (1, height, width), coordinates=CoordinateTargets.of(names, mean, std, []))
    out, moved = augmenter(images.reshape(size, -1), targets)
    out = out.reshape(size, height, width)
    where = moved.numpy() * std + mean
    col = np.rint(((where[:, 0] + 1) * width - 1) / 2).astype(int)
    row = np.rint(((where[:, 1] + 1) * height - 1) / 2).astype(int)
    assert np.allclose(((where[:, 0] + 1) * width - 1) / 2, col, atol=1e-4)  # on a pixel centre
    assert torch.all(out[torch.arange(size), torch.as_tensor(row), torch.as_tensor(col)] == 1.0)
    assert not np.array_equal(col, cols)  # something moved
    assert np.all(out.reshape(size, -1).sum(1).numpy() == 1.0)  # one pixel each, none lost at this shift


def test_noise_is_seeded_and_leaves_the_global_generator_alone() -> None:
    x, y = torch.zeros(4, 10), torch.zeros(4)
    settings = AugmentConfig(noise_std=0.5)
    state = torch.get_rng_state()
    first = BatchAugmenter(settings, seed=7)(x, y)[0]
    again = BatchAugmenter(settings, seed=7)(x, y)[0]
    other = BatchAugmenter(settings, seed=8)(x, y)[0]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert 0.3 < float(first.std()) < 0.7


def test_tabular_augmenter_refuses_flip_and_shift() -> None:
    with pytest.raises(ValueError, match="need images"):
        BatchAugmenter(AugmentConfig(max_shift=1), seed=0)


def test_only_training_batches_are_augmented() -> None:
    x = torch.randn(40, 6).numpy()
    y = (x[:, 0] > 0).astype(np.int64)
    seen: list[int] = []

    def spy(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(len(inputs))
        return inputs + 100.0, targets  # so wrong that a validation batch through it would show

    hp = HyperParams(batch_size=10)
    feed = make_train_loader(x, y, hp, 2, seed=0)
    val = make_eval_loader(x[:17], y[:17], batch_size=1024)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 2))
    fit(model, TrainFeed(feed.loader, task=feed.task, augment=spy), val, hp, 2, torch.device("cpu"))
    assert seen == [10] * 8  # 40 training rows, two epochs; never the 17 validation rows


def test_build_augmenter_follows_the_hyperparameter() -> None:
    config = PipelineConfig(augment=AugmentConfig(noise_std=0.1, flip_probability=0.5))
    task = RegressionTask(NAMES, MEAN.tolist(), STD.tolist())
    assert build_augmenter(config, HyperParams(), task, [1, 8, 8], 0) is None
    augmenter = build_augmenter(config, HyperParams(augment=True), task, [1, 8, 8], 0)
    assert augmenter is not None
    assert augmenter.coordinates is not None
    assert augmenter.coordinates.x_columns == (0, 2, 4)
    age = build_augmenter(config, HyperParams(augment=True), RegressionTask(["age"], [30.0], [9.0]), [1, 8, 8], 0)
    assert age is not None
    assert age.coordinates is None  # nothing to move: the targets are left exactly as they are
    with pytest.raises(ValueError, match="need images"):
        build_augmenter(config, HyperParams(augment=True), ClassificationTask(["a", "b"]), [30], 0)


def _with(**changes: object) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {"augment": changes, "space": {"augment": {"kind": "categorical", "choices": [False, True]}}}
    )


@pytest.mark.parametrize(
    ("changes", "shape", "task", "field"),
    [
        ({"noise_std": 0.1, "flip_pairs": [["left_eye", "right_ear"]]}, (1, 8, 8), "regression", "flip_pairs"),
        ({"noise_std": 0.1, "flip_pairs": [["left_eye_x", "nose"]]}, (1, 8, 8), "regression", "flip_pairs"),
        (
            {"flip_probability": 0.5, "flip_pairs": [["left_eye", "right_eye"]]},
            (1, 8, 8),
            "classification",
            "flip_pairs",
        ),
        ({"flip_probability": 0.5}, None, "regression", "flip_probability"),
        ({"max_shift": 2}, None, "classification", "max_shift"),
        ({"max_shift": 8}, (1, 8, 8), "regression", "max_shift"),
    ],
)
def test_stage_one_checks_augment_against_the_data(
    changes: dict[str, object], shape: tuple[int, ...] | None, task: str, field: str
) -> None:
    with pytest.raises(InputError) as raised:
        check_augment_settings(_with(**changes), shape, task, NAMES)
    assert raised.value.field == f"augment.{field}"


def test_stage_one_accepts_points_columns_and_tabular_noise() -> None:
    check_augment_settings(
        _with(flip_probability=0.5, flip_pairs=[["left_eye", "right_eye"]]), (1, 8, 8), "regression", NAMES
    )
    check_augment_settings(
        _with(flip_probability=0.5, flip_pairs=[["left_eye_x", "right_eye_x"]]), (1, 8, 8), "regression", NAMES
    )
    check_augment_settings(_with(noise_std=0.2), None, "classification", ["target"])
    # Flip settings unused by any run (augment never on) are not an error for tables.
    check_augment_settings(PipelineConfig(augment=AugmentConfig(flip_probability=0.5)), None, "regression", NAMES)


def test_config_refuses_augmentation_without_a_transform_and_bad_pairs() -> None:
    with pytest.raises(ValidationError, match=r"augment\.flip_probability, augment\.max_shift or augment\.noise_std"):
        PipelineConfig.model_validate({"space": {"augment": {"kind": "categorical", "choices": [False, True]}}})
    with pytest.raises(ValidationError, match=r"model\.baseline\.augment"):
        PipelineConfig.model_validate({"model": {"baseline": {"augment": True}}})
    with pytest.raises(ValidationError, match="with itself"):
        AugmentConfig(flip_pairs=[("eye", "eye")])
    with pytest.raises(ValidationError, match="more than one pair"):
        AugmentConfig(flip_pairs=[("a", "b"), ("b", "c")])
    with pytest.raises(ValidationError, match="augment choices must be true/false"):
        SearchSpace(augment=CategoricalParam(choices=["yes"]))


def test_search_samples_augment_and_rebuilds_it_from_params() -> None:
    import optuna

    space = SearchSpace(augment=CategoricalParam(choices=[False, True]))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = set()
    for _ in range(12):
        trial = study.ask()
        hp = suggest_hyperparams(trial, space, ModelConfig())
        values.add(hp.augment)
        assert trial.params["augment"] is hp.augment
        assert hyperparams_from_params(trial.params, space, ModelConfig()) == hp
        assert optuna_params(hp, space, ModelConfig())["augment"] is hp.augment
    assert values == {False, True}


def test_stage_one_records_how_digits_pixels_were_standardised(tmp_path: Path) -> None:
    from stagetune.data.stage import load_stage_arrays, run_sample_stage

    result = run_sample_stage(PipelineConfig(), tmp_path)
    assert result.input_mean is not None
    assert result.input_scale is not None
    assert len(result.input_mean) == len(result.input_scale) == 64
    pixels = load_stage_arrays(result).X_train * np.asarray(result.input_scale) + np.asarray(result.input_mean)
    # Undoing the standardisation gives back the digits' raw pixels: integers 0..16.
    np.testing.assert_allclose(pixels, np.rint(pixels), atol=1e-4)
    assert pixels.min() > -1e-4
    assert pixels.max() < 16 + 1e-4
    assert not any(w.startswith("augment:") for w in result.warnings)
    shifted = PipelineConfig.model_validate(
        {"augment": {"max_shift": 1}, "space": {"augment": {"kind": "categorical", "choices": [False, True]}}}
    )
    assert per_pixel_warning(shifted, pixels_of(result), channels=1)  # Stage 1 adds it to its warnings
    assert not per_pixel_warning(shifted, PixelScaling((0.5,), (0.25,)), channels=1)  # scaled per channel
    tabular = run_sample_stage(PipelineConfig.model_validate({"data": {"source": "builtin:iris"}}), tmp_path)
    assert tabular.input_mean is None


@pytest.mark.gpu
def test_augmentation_on_cuda_matches_the_cpu_geometry_and_is_seeded() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    images = torch.arange(4 * 3 * 5 * 6, dtype=torch.float32).reshape(4, 90)
    settings = AugmentConfig(flip_probability=1.0, noise_std=0.2)
    first, _ = BatchAugmenter(settings, 5, (3, 5, 6))(images.cuda(), torch.zeros(4, device="cuda"))
    again, _ = BatchAugmenter(settings, 5, (3, 5, 6))(images.cuda(), torch.zeros(4, device="cuda"))
    assert first.device.type == "cuda"
    assert torch.equal(first, again)
    flipped = images.reshape(4, 3, 5, 6).flip(-1).reshape(4, 90)
    assert 0.1 < float((first.cpu() - flipped).std()) < 0.3  # the flip, plus noise of the configured size
