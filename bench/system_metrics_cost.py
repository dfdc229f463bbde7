"""What system metrics cost a trial: the synchronous part, and the sampler thread's work per reading.

    python bench/system_metrics_cost.py [--readings 2000] [--out bench/results]

A trial shorter than `tracking.system_metrics_interval` gets one reading taken when it ends
(`SystemSampler.rows` on an empty window); its rows then travel in the trial's own final
`log_batch`, on the tracking thread, with no request of their own. The sampler thread takes one
reading per interval for the whole process. Both are timed here, in process, with nothing else
running in it; the A/B of whole pipelines (`bench/overhead.py --set tracking.system_metrics=false`)
is in the README next to this figure.
"""

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/system_metrics_cost.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DEFAULT_OUT, format_table, write_results
from stagetune.tracking.system_metrics import SystemSampler, read_system


def measure(readings: int) -> dict[str, float]:
    """Milliseconds per reading (`read_system`) and per trial end with no reading in its window (`rows`)."""
    read_system()  # first reading: NVML/psutil set-up, not a trial's cost
    started = time.perf_counter()
    for _ in range(readings):
        read_system()
    per_reading = (time.perf_counter() - started) / readings * 1000
    sampler = SystemSampler(interval=3600.0)  # no reading of its own during the measurement
    try:
        started = time.perf_counter()
        for _ in range(readings):
            now = time.time()
            sampler.rows(now, now)
        per_trial_end = (time.perf_counter() - started) / readings * 1000
    finally:
        sampler.stop()
    return {"readings": readings, "ms_per_reading": per_reading, "ms_per_short_trial": per_trial_end}


def main() -> None:
    """Print the table and write `<out>/system_metrics_cost.json`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    result = measure(args.readings)
    table = format_table(
        ["readings", "ms per reading", "ms added to a trial shorter than the interval"],
        [[result["readings"], round(result["ms_per_reading"], 3), round(result["ms_per_short_trial"], 3)]],
    )
    path = write_results(args.out, "system_metrics_cost", {**result, "table": table})
    print(table)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
