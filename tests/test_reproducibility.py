"""Trials own their random streams: a trial's result does not depend on trials running beside it in threads.

Trials at `execution.concurrency` > 1 are threads of one process, and torch has one global generator
per process. These tests run trials and model builds side by side, in lockstep, and compare with the
same work done alone: any draw from a shared stream would change the numbers.
"""

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from schemas.config import ExecutionConfig, PipelineConfig
from schemas.hyperparams import HyperParams
from schemas.results import EpochRecord
from stagetune.config_loading import load_config
from stagetune.data.source import LoadOptions
from stagetune.data.stage import load_stage_arrays, run_sample_stage
from stagetune.examples_data import SHAPES, make_shapes
from stagetune.models import build_model
from stagetune.models.layers import SeededDropout, own_dropout_streams
from stagetune.stages import trial
from stagetune.stages.trial import TrialContext, TrialData
from stagetune.task.classification import ClassificationTask
from stagetune.training.loaders import LazyBatches, make_eval_loader, make_train_loader
from stagetune.training.reproducibility import cpu_threads, stream_seed, use_deterministic_algorithms

EPOCHS = 4


def synthetic_data() -> TrialData:
    """Three classes in 16 noisy features: enough to train, small enough for a unit test."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(360, 16)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    task = ClassificationTask(["a", "b", "c"])
    return TrialData(x[:240], y[:240], x[240:], y[240:], input_shape=[16], task=task)


def context(tmp_path: Path, data: TrialData) -> TrialContext:
    config = load_config(
        None,
        [
            "execution.device=cpu",
            f"execution.workdir={tmp_path}",
            "search.objective=val_loss",
            "search.cv_folds=1",
            "augment.noise_std=0.3",
        ],
    )
    # The tracking tree is not used by the training of a trial.
    return TrialContext(config, None, "coarse", "stage-run", "study", EPOCHS, data)  # type: ignore[arg-type]


TRIAL_A = HyperParams(dropout=0.4, width=48, depth=2, batch_size=16, optimizer="adam", learning_rate=3e-3)
TRIAL_B = HyperParams(dropout=0.25, width=64, depth=3, batch_size=24, augment=True, learning_rate=1e-2)


def curves(history: list[EpochRecord]) -> list[tuple[float, float | None, dict[str, float]]]:
    return [(r.train_loss, r.val_loss, r.metrics) for r in history]


def train(ctx: TrialContext, number: int, hp: HyperParams, epoch_done: Callable[[], object]) -> list[EpochRecord]:
    history: list[EpochRecord] = []

    def report(epoch: int, value: float) -> bool:
        epoch_done()
        return False

    result = trial._train(ctx, number, hp, report, history)
    assert result.status == "completed", result.reason
    return history


def test_a_trial_gives_the_same_values_alone_and_beside_another_trial_in_a_thread(tmp_path: Path) -> None:
    ctx = context(tmp_path, synthetic_data())
    alone_a = train(ctx, 0, TRIAL_A, lambda: None)
    alone_b = train(ctx, 1, TRIAL_B, lambda: None)
    # Side by side in lockstep: both build their models, then train every epoch, at the same time.
    barrier = threading.Barrier(2, timeout=120)
    with ThreadPoolExecutor(2) as pool:
        together_a = pool.submit(train, ctx, 0, TRIAL_A, barrier.wait)
        together_b = pool.submit(train, ctx, 1, TRIAL_B, barrier.wait)
        side_a, side_b = together_a.result(), together_b.result()
    assert len(alone_a) == len(side_a) == EPOCHS
    assert curves(side_a) == curves(alone_a)
    assert curves(side_b) == curves(alone_b)
    # The curves are not trivially equal: another trial number (other streams) trains differently.
    assert curves(train(ctx, 2, TRIAL_A, lambda: None)) != curves(alone_a)


def test_trial_seeds_differ_by_stage_and_number_and_repeat() -> None:
    seeds = {stream_seed(0, stage, number) for stage in ("coarse", "refine") for number in range(50)}
    assert len(seeds) == 100
    assert stream_seed(0, "coarse", 3) == stream_seed(0, "coarse", 3)
    assert stream_seed(0, "coarse", 3) != stream_seed(1, "coarse", 3)
    assert all(0 <= s < 2**31 for s in seeds)


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.state_dict().values()]


def test_models_built_in_threads_at_once_equal_those_built_alone() -> None:
    hp = HyperParams(width=256, depth=4, dropout=0.1)
    seeds = list(range(8))
    alone = {seed: weights(build_model("mlp", hp, [64], 10, seed=seed)) for seed in seeds}
    barrier = threading.Barrier(len(seeds), timeout=60)

    def build(seed: int) -> list[torch.Tensor]:
        barrier.wait()
        return weights(build_model("mlp", hp, [64], 10, seed=seed))

    with ThreadPoolExecutor(len(seeds)) as pool:
        together = dict(zip(seeds, pool.map(build, seeds), strict=True))
    for seed in seeds:
        assert all(torch.equal(a, b) for a, b in zip(alone[seed], together[seed], strict=True)), seed


def test_a_seeded_build_leaves_the_global_generator_as_it_was() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    model = build_model("mlp", HyperParams(dropout=0.5), [8], 3, seed=4).train()
    model(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(torch.get_rng_state(), state)


def test_seeded_builds_replace_dropout_and_plain_builds_keep_it() -> None:
    hp = HyperParams(dropout=0.3, depth=2)
    seeded = build_model("mlp", hp, [8], 3, seed=1)
    plain = build_model("mlp", hp, [8], 3)
    assert [type(m) for m in seeded.modules() if isinstance(m, nn.Dropout)] == [SeededDropout, SeededDropout]
    assert [type(m) for m in plain.modules() if isinstance(m, nn.Dropout)] == [nn.Dropout, nn.Dropout]
    # Same state dict either way: a checkpoint of one loads into the other.
    plain.load_state_dict(seeded.state_dict())


def test_seeded_dropout_masks_repeat_per_seed_and_scale_like_torch() -> None:
    x = torch.ones(2000, 50)
    first, again, other = SeededDropout(0.3, seed=5), SeededDropout(0.3, seed=5), SeededDropout(0.3, seed=6)
    out = first(x)
    assert torch.equal(out, again(x))
    assert not torch.equal(out, other(x))
    assert out.unique().tolist() == pytest.approx([0.0, 1 / 0.7])
    assert (out == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert torch.equal(first.eval()(x), x)
    assert torch.equal(SeededDropout(1.0, seed=0)(x), torch.zeros_like(x))


def test_seeded_dropout_passes_gradients_through_the_kept_elements() -> None:
    x = torch.randn(30, 20, requires_grad=True)
    out = SeededDropout(0.5, seed=0)(x)
    out.sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad, (out != 0).float() * 2.0)


def test_only_plain_dropout_is_replaced_with_streams_named_by_position() -> None:
    model = nn.Sequential(nn.Dropout(0.1), nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.2)), nn.Dropout2d(0.5))
    assert own_dropout_streams(model, seed=9) == 2
    first, nested = model[0], model.get_submodule("1.1")
    assert isinstance(first, SeededDropout)
    assert isinstance(nested, SeededDropout)
    assert (first.p, nested.p) == (0.1, 0.2)
    assert first.seed != nested.seed
    assert type(model[2]) is nn.Dropout2d


def test_the_deterministic_switch_sets_torch_and_cublas_and_lifts() -> None:
    try:
        use_deterministic_algorithms(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
    finally:
        use_deterministic_algorithms(False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic


def test_the_deterministic_switch_sets_the_cublas_workspace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        use_deterministic_algorithms(True)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        use_deterministic_algorithms(False)


def test_trials_compute_on_the_configured_threads_or_the_cores_split_by_concurrency() -> None:
    cores = os.cpu_count() or 1
    assert cpu_threads(ExecutionConfig(concurrency=2, cpu_threads_per_trial=3)) == 3
    assert cpu_threads(ExecutionConfig(concurrency=2)) == max(1, cores // 2)
    assert cpu_threads(ExecutionConfig(concurrency=4 * cores)) == 1
    assert cpu_threads(ExecutionConfig(concurrency=1)) >= 1


def test_the_reproducibility_cost_bench_times_its_three_arms() -> None:
    from bench.reproducibility_cost import ARMS, measure

    tiny = {"mlp": ("mlp", HyperParams(width=8, depth=1, dropout=0.2, batch_size=4), [6])}
    result = measure("cpu", steps=1, rounds=1, models=tiny)
    rows = result["rows"]
    assert isinstance(rows, list)
    assert [row["arm"] for row in rows] == list(ARMS)
    assert all(row["ms_per_step"] > 0 for row in rows)
    assert rows[0]["ratio"] == 1.0
    assert not torch.are_deterministic_algorithms_enabled()  # the deterministic arm lifts its setting


@pytest.mark.parametrize("rebalance", ["none", "balanced_batches"])
def test_lazily_read_batches_leave_the_global_generator_alone(tmp_path: Path, rebalance: str) -> None:
    # A DataLoader draws its workers' base seed every epoch: from the trial's generator, not the global one.
    make_shapes(tmp_path / "shapes", per_class=6, size=8, seed=1)
    config = PipelineConfig.model_validate({"data": {"source": f"{tmp_path / 'shapes'}/"}, "model": {"family": "cnn"}})
    sample = run_sample_stage(config, tmp_path / "sample")
    arrays = load_stage_arrays(sample, LoadOptions(num_workers=1))
    hp = HyperParams(batch_size=8, rebalance=rebalance)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    feed = make_train_loader(arrays.X_train, arrays.y_train, hp, len(SHAPES), seed=4)
    assert isinstance(feed.loader, LazyBatches)
    epochs = [torch.cat([y for _, y in feed.loader]) for _ in range(2)]
    list(make_eval_loader(arrays.X_val, arrays.y_val, batch_size=8))
    assert torch.equal(torch.get_rng_state(), state)
    again = make_train_loader(arrays.X_train, arrays.y_train, hp, len(SHAPES), seed=4)
    for epoch in epochs:  # and the same seed gives the same batches, epoch after epoch
        assert torch.equal(torch.cat([y for _, y in again.loader]), epoch)
