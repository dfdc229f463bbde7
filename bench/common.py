"""Helpers every benchmark script shares: process set-up, the machine's description, stats, tables, JSON."""

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results"


def prepare_process() -> None:
    """Quiet Prefect, MLflow and Ray the way the CLI does; call before any of them is imported."""
    from stagetune.runtime import configure_process

    configure_process(verbose=False)
    machine()  # record the commit the run starts from
    # Ray Tune's console reporter would print a table per result; the scripts print their own.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Workers Ray starts must import `bench.*` (trainables are pickled by reference).
    path = os.environ.get("PYTHONPATH", "")
    if str(REPO) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), path) if p)


@cache
def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, memory, OS, Python, torch, and the commit.

    Cached: `prepare_process` calls it first, so the commit is the one the run started from.
    """
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "commit": _git("rev-parse", "--short", "HEAD"),
        # Uncommitted changes (which files); results written by an earlier benchmark of the same run do not count.
        "dirty_files": _git("diff", "HEAD", "--name-only", "--", ".", ":(exclude)bench/results").split(),
    }


def installed_version(package: str) -> str | None:
    """The installed version of `package`, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def ray_available() -> bool:
    """Whether Ray Tune can be imported (it is an optional extra of the benchmarks)."""
    try:
        import ray.tune  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Spread:
    """Median and spread of a few measurements."""

    median: float
    q25: float
    q75: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        """Plain numbers for JSON."""
        return {"median": self.median, "q25": self.q25, "q75": self.q75, "min": self.low, "max": self.high, "n": self.n}


def spread(values: Sequence[float]) -> Spread:
    """Median, quartiles (inclusive method) and range of `values` (NaN everywhere when empty)."""
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return Spread(math.nan, math.nan, math.nan, math.nan, math.nan, 0)
    if len(finite) == 1:
        only = finite[0]
        return Spread(only, only, only, only, only, 1)
    q25, _, q75 = statistics.quantiles(finite, n=4, method="inclusive")
    return Spread(statistics.median(finite), q25, q75, finite[0], finite[-1], len(finite))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (readable in a terminal too)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    lines.append("| " + " | ".join("-" * w for w in widths) + " |")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join(lines)


def write_results(out_dir: Path, name: str, payload: Mapping[str, Any]) -> Path:
    """Write `payload` with the machine, date and command as `<out_dir>/<name>.json`; return the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        **payload,
    }
    path = out_dir / f"{name}.json"
    text = json.dumps(_finite(document), indent=2, default=_json_default, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


class Stopwatch:
    """`with Stopwatch() as watch: ...` then `watch.seconds`."""

    def __init__(self) -> None:
        self.started = 0.0
        self.seconds = math.nan

    def __enter__(self) -> "Stopwatch":
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _finite(value: object) -> object:
    """`value` with every NaN/inf float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()
