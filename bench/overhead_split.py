"""Where the overhead of short trials goes: one warm pipeline run of 1 s trials (as in `bench/overhead.py`)
with timers around the calls of the ask/tell loop and of each trial.

    python bench/overhead_split.py [--trials 20] [--store local|server] [--set KEY=VALUE] [--out bench/results]

On the critical path, per trial: Optuna (ask, tell, the per-epoch report), the training loop's own work
(the timed model's steps sleep; backward, optimizer step and validation do not), the rest of the trial
function, the wait for the queued MLflow records when a stage ends, and the rest of the search window:
Prefect's task machinery (task run and state records, result hand-over) and the loop. Off the critical
path, for information: the busy time of the tracking thread (each trial's run created, then its params,
metrics, tags, end and learning-curve SVG), which overlaps the trials' training. Outside the searches:
the report, the final stage, and the rest (flow run start, sample stage, narrowing, the MLflow parent
run). Timers wrap functions by name, for this run only.
"""

import argparse
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

if __package__ in (None, ""):  # run as `python bench/overhead_split.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DEFAULT_OUT, format_table, prepare_process, write_results
from bench.overhead import Store, Workload, measure_stagetune, overhead_config, tracking_for, warm_up


class CallTimer:
    """Wall seconds and calls per label."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()

    def wrap(self, function: Callable[..., Any], label: str) -> Callable[..., Any]:
        """`function`, timed under `label`."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - started
                self.calls[label] += 1

        return timed


BACKGROUND = ("tracking thread: trial run created", "tracking thread: records, end, learning-curve SVG")
OUTSIDE = ("report", "final stage")


@contextmanager
def timers_installed(timer: CallTimer) -> Iterator[None]:
    """Wrap the pipeline's calls with `timer` (undone on exit)."""
    import tasks.report
    import tasks.search
    import tasks.stages
    from stagetune.search.pruning_reporter import PruningReporter
    from stagetune.stages import trial
    from stagetune.stages.search_session import SearchSession
    from stagetune.tracking.run_tree import RunTree

    labels = {
        (SearchSession, "ask"): "optuna: ask (claim a trial, suggest)",
        (SearchSession, "tell"): "optuna: tell",
        (SearchSession, "finish"): "stage finish",
        (SearchSession, "_close_tracking"): "stage finish: wait for queued trial records",
        (PruningReporter, "__call__"): "optuna: per-epoch report/should_prune",
        (trial, "_train"): "training loop (with the sleep)",
        (tasks.search, "run_trial"): "run_trial",
        (RunTree, "start_trial"): BACKGROUND[0],
        (trial, "_record"): BACKGROUND[1],
        (tasks.report, "publish_report"): "report",
        (tasks.stages, "final_stage"): "final stage",
    }
    with ExitStack() as stack:
        for (owner, name), label in labels.items():
            stack.enter_context(mock.patch.object(owner, name, timer.wrap(getattr(owner, name), label)))
        yield


def run_split(workload: Workload, store: Store = "local", extra: Sequence[str] = ()) -> dict[str, Any]:
    """One warm run of `workload` with the timers in: ms per trial for each part of the searches, and the table."""
    load_before = os.getloadavg()
    timer = CallTimer()
    with (
        tempfile.TemporaryDirectory(prefix="bench-split-") as folder,
        tracking_for(store, Path(folder)) as (uri, _seconds),
    ):
        warm_up(uri, Path(folder))
        config = overhead_config(workload, Path(folder), uri, "overhead-split", extra)
        with timers_installed(timer):
            measured = measure_stagetune(config, store, workload)
    n, seconds = measured.trials, dict(timer.seconds)
    per_trial = {label: 1000 * value / n for label, value in seconds.items() if label not in OUTSIDE}
    background = {label: per_trial.pop(label, 0.0) for label in BACKGROUND}
    run_trial, training = per_trial.pop("run_trial"), per_trial.pop("training loop (with the sleep)")
    nominal = 1000 * measured.search_training_s / n
    # The per-epoch report runs inside the training loop; the sleep is the trials' nominal training.
    own_work = training - nominal - per_trial["optuna: per-epoch report/should_prune"]
    per_trial["training loop's own work (backward, optimizer, validation)"] = own_work
    per_trial["run_trial: the rest (diagnosis, record, queueing)"] = run_trial - training
    waited = per_trial["stage finish: wait for queued trial records"]
    per_trial["stage finish: summary, study plots, end"] = per_trial.pop("stage finish") - waited
    loop = run_trial + sum(per_trial[k] for k in per_trial if k.startswith(("optuna: ask", "optuna: tell", "stage")))
    per_trial["Prefect task machinery + the loop (rest of the search window)"] = measured.search_per_trial_ms - (
        loop - nominal
    )
    outside = measured.wall_s - measured.search_wall_s
    rest_outside = outside - seconds["report"] - seconds["final stage"]
    return {
        "workload": workload.label,
        "trials": n,
        "store": store,
        "stagetune_overrides": list(extra),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "measurement": measured.as_dict(),
        "search_ms_per_trial": per_trial,
        "background_ms_per_trial": background,
        "outside_search_s": {"report": seconds["report"], "final stage": seconds["final stage"], "rest": rest_outside},
        "table": table(measured.search_per_trial_ms, per_trial, background, seconds, rest_outside),
    }


def table(
    search_ms: float,
    per_trial: dict[str, float],
    background: dict[str, float],
    seconds: dict[str, float],
    rest_outside: float,
) -> str:
    """Markdown: the searches' overhead per trial by part, the tracking thread's work, what runs outside them."""
    rows = [[label, f"{ms:.0f}"] for label, ms in sorted(per_trial.items(), key=lambda item: -item[1])]
    rows.append(["**search overhead per trial (sum)**", f"{search_ms:.0f}"])
    off_path = [[label, f"{ms:.0f}"] for label, ms in background.items()]
    outside = [
        ["report", f"{seconds['report']:.2f}"],
        ["final stage (its 2 training steps included)", f"{seconds['final stage']:.2f}"],
        ["rest: flow run start/end, sample stage, narrowing, MLflow parent run", f"{rest_outside:.2f}"],
    ]
    return "\n\n".join(
        [
            format_table(["search stages, critical path: part", "ms per trial"], rows),
            format_table(["off the critical path (overlaps training), not in the sum", "ms per trial"], off_path),
            format_table(["outside the searches", "s per run"], outside),
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run it, print the tables, write `<out>/overhead_split.json`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="1 s trials, split between coarse and refine")
    parser.add_argument("--store", choices=["local", "server"], default="local")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra stagetune override")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON results")
    args = parser.parse_args(argv)
    prepare_process()
    results = run_split(Workload(0.1, 5, args.trials), args.store, args.overrides)
    path = write_results(args.out, f"overhead_split_{args.store}", results)
    print(results["table"])
    print(f"load average before/after: {results['load_average_before']} / {results['load_average_after']}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
