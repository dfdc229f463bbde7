"""A custom model family whose training steps take a fixed time, for the overhead benchmark.

Use it as `model.import_path: bench.timed_model:sleep_100ms` (family `custom`). In training mode each
forward pass sleeps for the step time and records the interval in this process's `LEDGER`, so a
benchmark knows exactly how much of a run was training; evaluation passes are instant.
"""

import threading
import time
from collections.abc import Sequence

import torch
from torch import nn

from schemas.hyperparams import HyperParams


class TrainingLedger:
    """Wall-clock intervals (time.time()) spent in training steps in this process; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._intervals: list[tuple[float, float]] = []

    def add(self, start: float, end: float) -> None:
        """Record one step."""
        with self._lock:
            self._intervals.append((start, end))

    def total(self) -> float:
        """Seconds recorded so far."""
        with self._lock:
            return sum(end - start for start, end in self._intervals)

    def within(self, start: float, end: float) -> float:
        """Seconds recorded inside the window [start, end]."""
        with self._lock:
            return sum(max(0.0, min(end, b) - max(start, a)) for a, b in self._intervals)

    def clear(self) -> None:
        """Forget every interval."""
        with self._lock:
            self._intervals.clear()


LEDGER = TrainingLedger()


class TimedModel(nn.Module):
    """A linear classifier whose training forward pass takes `step_seconds` (the backward pass is ~free)."""

    def __init__(self, in_features: int, num_classes: int, step_seconds: float) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)
        self.step_seconds = step_seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits; in training mode after sleeping for the rest of the step."""
        if not self.training:
            return self.linear(x.flatten(1))
        started = time.time()
        logits = self.linear(x.flatten(1))
        time.sleep(max(0.0, self.step_seconds - (time.time() - started)))
        LEDGER.add(started, time.time())
        return logits


def _timed(step_seconds: float, input_shape: Sequence[int], num_classes: int) -> TimedModel:
    return TimedModel(int(torch.tensor(list(input_shape)).prod()), num_classes, step_seconds)


def sleep_10ms(hp: HyperParams, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Training steps of 10 ms."""
    return _timed(0.01, input_shape, num_classes)


def sleep_100ms(hp: HyperParams, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Training steps of 100 ms."""
    return _timed(0.1, input_shape, num_classes)


def sleep_1000ms(hp: HyperParams, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Training steps of 1 s."""
    return _timed(1.0, input_shape, num_classes)


FACTORIES = {0.01: "sleep_10ms", 0.1: "sleep_100ms", 1.0: "sleep_1000ms"}
