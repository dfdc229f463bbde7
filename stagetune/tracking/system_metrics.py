"""System metrics (CPU, memory; GPU utilisation and memory with NVML) on trial and final runs.

Readings come from MLflow's own monitors (`mlflow.system_metrics`), under MLflow's names
(`system/cpu_utilization_percentage`, `system/system_memory_usage_megabytes`,
`system/gpu_0_utilization_percentage`, ...), so the UI's "System metrics" tab shows them.

The final run, minutes long, gets MLflow's `SystemMetricsMonitor` (a thread that logs every
interval while the run is RUNNING; it works on any run id, `MlflowClient`-created ones included).
A monitor per trial would cost a thread, a `get_run` per sample and a `log_batch` per interval for
each trial, and would log nothing for a trial shorter than its interval. Trials share one sampler
thread per process instead: it reads the machine every interval, and a trial's readings (those
taken while it trained, or one taken when it ended if none were) travel in the trial's own final
`log_batch`. A one-second trial pays for one reading (well under a millisecond) and no request.
"""

import bisect
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
from mlflow.system_metrics.metrics.base_metrics_monitor import BaseMetricsMonitor
from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

LOGGER = logging.getLogger(__name__)
PREFIX = "system/"
_KEEP_SAMPLES = 4096  # readings kept for trials in flight: over 11 hours at a 10 s interval


def _gpu_monitor() -> BaseMetricsMonitor | None:
    """MLflow's NVML monitor when `nvidia-ml-py` is installed and a GPU answers, else None."""
    try:
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        return GPUMonitor()
    except Exception:  # no pynvml, no driver, no GPU
        return None


def read_system() -> dict[str, float]:
    """One reading of the machine (MLflow's CPU monitor; its GPU monitor when NVML answers), prefixed `system/`."""
    values: dict[str, float] = {}
    with _MONITORS_LOCK:  # the monitors keep their readings in lists: one reader at a time
        for monitor in _monitors():
            monitor.collect_metrics()
            values.update({PREFIX + name: float(series[-1]) for name, series in monitor.metrics.items() if series})
            monitor.clear_metrics()
    return values


_MONITORS: list[BaseMetricsMonitor] | None = None
_MONITORS_LOCK = threading.Lock()


def _monitors() -> list[BaseMetricsMonitor]:
    global _MONITORS
    if _MONITORS is None:
        gpu = _gpu_monitor()
        psutil.cpu_percent()  # its first call returns 0.0: it measures from the previous call
        _MONITORS = [CPUMonitor()] + ([gpu] if gpu is not None else [])
    return _MONITORS


class SystemSampler:
    """One thread per process reading the machine every `interval` seconds; trials take their share."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._times: deque[float] = deque(maxlen=_KEEP_SAMPLES)
        self._readings: deque[dict[str, float]] = deque(maxlen=_KEEP_SAMPLES)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stagetune-system-metrics", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._add(read_system())
            except Exception as error:  # a failing reading must never stop a search
                LOGGER.debug("system metrics reading failed: %s", error)

    def _add(self, reading: dict[str, float]) -> None:
        with self._lock:
            self._times.append(time.time())
            self._readings.append(reading)

    def rows(self, started: float, ended: float) -> list[tuple[str, float, int]]:
        """(name, value, step) rows of the readings taken between `started` and `ended` (epoch seconds),
        step 0 first; one reading taken now when none fell in that window."""
        with self._lock:
            times = list(self._times)
            first, last = bisect.bisect_left(times, started), bisect.bisect_right(times, ended)
            readings = list(self._readings)[first:last]
        if not readings:
            readings = [read_system()]
        return [(name, value, step) for step, reading in enumerate(readings) for name, value in reading.items()]

    def stop(self) -> None:
        """End the thread (tests; the process's own sampler runs until exit)."""
        self._stop.set()
        self._thread.join()


_SAMPLERS: dict[float, SystemSampler] = {}
_SAMPLERS_LOCK = threading.Lock()


def trial_sampler(interval: float) -> SystemSampler:
    """The process's sampler for `interval` (started on first use)."""
    with _SAMPLERS_LOCK:
        sampler = _SAMPLERS.get(interval)
        if sampler is None:
            sampler = _SAMPLERS[interval] = SystemSampler(interval)
        return sampler


@contextmanager
def monitored_run(tracking_uri: str, run_id: str, interval: float) -> Iterator[None]:
    """MLflow's `SystemMetricsMonitor` on `run_id` while the block runs; a run shorter than one interval
    still gets the readings taken (MLflow's monitor logs only whole intervals)."""
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, tracking_uri=tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        try:
            monitor.finish()
            if monitor._logging_step == 0:  # stopped before its first interval ended: log what it read
                if not any(m.metrics for m in monitor.monitors):
                    monitor.collect_metrics()
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()
        except Exception as error:  # the run's own results matter more than its system metrics
            LOGGER.warning("system metrics of run %s were not all logged: %s", run_id, error)
