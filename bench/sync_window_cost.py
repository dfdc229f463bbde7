"""What `search.sync_window` costs in wall time: the real ask/tell loop and barrier, trials that sleep.

    python bench/sync_window_cost.py [--trials 24] [--concurrency 2] [--median 0.3] [--sigma 0.5]
                                     [--rounds 3] [--windows 1 2 4 8] [--out bench/results]

Trial n sleeps a duration drawn from a log-normal (median `--median` s, `--sigma`) seeded by n, the
same in every arm, so the arms differ only in scheduling: `run_trials` with `claim_trial`'s barrier
over an SQLite study, at `--concurrency`, for each window and without one ("off": the loop as it was,
trials asked as soon as a slot frees). Sleeping trials use no CPU, so a loaded machine moves these
figures little; training trials add their own spread of durations (pruned ones are short), which is
what the barrier waits on. Rounds interleave the arms.
"""

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as `python bench/sync_window_cost.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna

from bench.common import DEFAULT_OUT, format_table, spread, write_results
from schemas.search import TrialRecord
from stagetune.search.budget import Blocked, claim_trial
from stagetune.search.study import open_storage
from stagetune.stages.search_loop import run_trials


def durations(n_trials: int, median: float, sigma: float) -> list[float]:
    """Seconds trial n sleeps: seeded by n alone, the same in every arm."""
    return [float(np.random.default_rng([7, n]).lognormal(np.log(median), sigma)) for n in range(n_trials)]


@dataclass
class SleepSession:
    """The part of `SearchSession` the loop uses, over a real study and `claim_trial` (the real barrier)."""

    study: optuna.Study
    storage: str
    n_trials: int
    sync_window: int | None
    stage: str = "refine"
    context: object = None
    blocked: int = 0
    told: list[int] = field(default_factory=list)

    def ask(self) -> tuple[optuna.Trial, object, dict[str, object]] | Blocked | None:
        trial = claim_trial(self.study, self.storage, self.n_trials, None, self.sync_window)
        if isinstance(trial, Blocked):
            self.blocked += 1
            return trial
        return None if trial is None else (trial, None, {})

    def pruning_reporter(self, trial: optuna.Trial) -> None:
        return None

    def trials_started(self) -> None:
        pass

    def others_running(self) -> bool:
        return False

    def tell(self, trial: optuna.Trial, record: TrialRecord) -> None:
        self.study.tell(trial, record.value)
        self.told.append(trial.number)

    def abandon(self, waiters: dict[int, Any]) -> None:
        pass


class SleepTrials:
    """Each trial sleeps its duration on a thread of its own."""

    def __init__(self, seconds: Sequence[float], concurrency: int) -> None:
        self.seconds = seconds
        self.pool = ThreadPoolExecutor(concurrency)

    def submit(self, context: object, number: int, hp: object, params: object, report: object) -> Future[TrialRecord]:
        def sleep() -> TrialRecord:
            time.sleep(self.seconds[number])
            return TrialRecord.model_construct(number=number, state="COMPLETE", value=float(number))

        return self.pool.submit(sleep)

    def first_done(self, handles: list[Future[TrialRecord]]) -> Future[TrialRecord]:
        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        return min(done, key=handles.index)

    def result(self, handle: Future[TrialRecord]) -> TrialRecord:
        return handle.result()

    def waiter(self, handle: Future[TrialRecord]) -> None:
        return None


def one_run(folder: Path, window: int | None, seconds: Sequence[float], concurrency: int) -> tuple[float, int]:
    """Wall seconds of one search, and how often the loop found the next trial held back."""
    url = f"sqlite:///{folder / f'{time.monotonic_ns()}.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    session = SleepSession(study, url, len(seconds), window)
    runner = SleepTrials(seconds, concurrency)
    started = time.perf_counter()
    try:
        run_trials(session, runner, concurrency, wait_for_others=False)  # type: ignore[arg-type]
    finally:
        runner.pool.shutdown()
    assert sorted(session.told) == list(range(len(seconds)))
    return time.perf_counter() - started, session.blocked


def measure(
    n_trials: int, concurrency: int, median: float, sigma: float, rounds: int, windows: Sequence[int]
) -> list[dict[str, Any]]:
    """Per arm (each window, and None: no window): wall times over `rounds` interleaved rounds."""
    seconds = durations(n_trials, median, sigma)
    arms: list[int | None] = [None, *windows]
    walls: dict[int | None, list[float]] = {arm: [] for arm in arms}
    held: dict[int | None, int] = dict.fromkeys(arms, 0)
    with tempfile.TemporaryDirectory() as folder:
        one_run(Path(folder), None, seconds[:2], concurrency)  # warm-up: imports, the storage's engine
        for _ in range(rounds):
            for arm in arms:
                wall, blocked = one_run(Path(folder), arm, seconds, concurrency)
                walls[arm].append(wall)
                held[arm] = blocked
    ideal = sum(seconds) / concurrency
    base = spread(walls[None]).median
    return [
        {
            "window": "off" if arm is None else arm,
            "wall_s": spread(walls[arm]).as_dict(),
            "x_off": spread(walls[arm]).median / base,
            "x_ideal": spread(walls[arm]).median / ideal,
            "held_back_asks": held[arm],
        }
        for arm in arms
    ]


def main() -> None:
    """Print the table and write `<out>/sync_window_cost.json`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--median", type=float, default=0.3)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    rows = measure(args.trials, args.concurrency, args.median, args.sigma, args.rounds, args.windows)
    table = format_table(
        ["sync_window", "wall s (median)", "x no window", "x sum/concurrency", "asks held back (last round)"],
        [
            [
                r["window"],
                round(r["wall_s"]["median"], 2),
                round(r["x_off"], 3),
                round(r["x_ideal"], 3),
                r["held_back_asks"],
            ]
            for r in rows
        ],
    )
    path = write_results(args.out, "sync_window_cost", {"settings": vars(args) | {"out": str(args.out)}, "rows": rows})
    print(table)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
