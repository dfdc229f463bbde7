"""What reproducible trials cost a training step: the trial's own dropout stream, and deterministic kernels.

    python bench/reproducibility_cost.py [--steps 200] [--rounds 5] [--device cpu|cuda] [--threads 1]

Three arms on the same model, batches and seed, interleaved round by round so that load on a shared
machine falls on all of them alike (the median step time of each arm is reported):
- `nn.Dropout`: torch's dropout, masks from the process's global generator (what trials used before);
- `SeededDropout`: the same masks drawn from the model's own generator (`build_model(seed=...)` now);
- `SeededDropout + deterministic`: also `execution.deterministic` (torch.use_deterministic_algorithms,
  cuDNN deterministic, no cuDNN benchmark, CUBLAS_WORKSPACE_CONFIG).
Models: the digits MLP at a larger width (dropout after each hidden layer) and the small CNN on 32x32
images (dropout before the head). Without CUDA, `--device cuda` prints `skipped: no CUDA`.
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/reproducibility_cost.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from bench.common import DEFAULT_OUT, format_table, write_results
from schemas.hyperparams import HyperParams
from stagetune.models import build_model
from stagetune.training.reproducibility import use_deterministic_algorithms

ARMS = ("nn.Dropout", "SeededDropout", "SeededDropout + deterministic")
MODELS: dict[str, tuple[str, HyperParams, list[int]]] = {
    "mlp 3x512, dropout 0.3": ("mlp", HyperParams(width=512, depth=3, dropout=0.3, batch_size=256), [64]),
    "cnn 3 blocks x32, dropout 0.3": (
        "cnn",
        HyperParams(channels=32, depth=3, dropout=0.3, batch_size=128),
        [3, 32, 32],
    ),
}


def _model(family: str, hp: HyperParams, shape: list[int], arm: str, device: torch.device) -> nn.Module:
    model = build_model(family, hp, shape, 10, seed=0)
    if arm == "nn.Dropout":  # the same weights with torch's own dropout
        plain = build_model(family, hp, shape, 10)
        plain.load_state_dict(model.state_dict())
        model = plain
    return model.to(device).train()


def step_seconds(family: str, hp: HyperParams, shape: list[int], arm: str, device: torch.device, steps: int) -> float:
    """Mean seconds per training step (forward, backward, AdamW update) of `steps` steps after 5 warm-up steps."""
    use_deterministic_algorithms(arm.endswith("deterministic"))
    try:
        model = _model(family, hp, shape, arm, device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        data = torch.Generator().manual_seed(1)
        x = torch.randn(hp.batch_size, *shape, generator=data).to(device)
        y = torch.randint(0, 10, (hp.batch_size,), generator=data).to(device)

        def step() -> None:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return _timed(step, steps, device)
    finally:
        use_deterministic_algorithms(False)


def _timed(step: Callable[[], None], steps: int, device: torch.device) -> float:
    for _ in range(5):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - started) / steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    device_name: str, steps: int, rounds: int, models: dict[str, tuple[str, HyperParams, list[int]]] = MODELS
) -> dict[str, object]:
    """Per model and arm: the median over `rounds` of the mean step time, and its ratio to `nn.Dropout`."""
    device = torch.device(device_name)
    rows = []
    for label, (family, hp, shape) in models.items():
        times: dict[str, list[float]] = {arm: [] for arm in ARMS}
        for _ in range(rounds):
            for arm in ARMS:
                times[arm].append(step_seconds(family, hp, shape, arm, device, steps))
        base = statistics.median(times["nn.Dropout"])
        for arm in ARMS:
            median = statistics.median(times[arm])
            rows.append({"model": label, "arm": arm, "ms_per_step": median * 1000, "ratio": median / base})
    return {
        "device": device_name,
        "steps": steps,
        "rounds": rounds,
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }


def main() -> None:
    """Print the table and write `<out>/reproducibility_cost_<device>.json`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA")
        return
    torch.set_num_threads(args.threads)
    result = measure(args.device, args.steps, args.rounds)
    rows = result["rows"]
    assert isinstance(rows, list)
    table = format_table(
        ["model", "arm", "ms per step (median)", "x nn.Dropout"],
        [[r["model"], r["arm"], round(r["ms_per_step"], 3), round(r["ratio"], 3)] for r in rows],
    )
    path = write_results(args.out, f"reproducibility_cost_{args.device}", {**result, "table": table})
    print(table)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
