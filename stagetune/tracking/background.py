"""Tracking writes done in order on one background thread, off the critical path of the search loop.

A trial's MLflow records (its run, params, metrics, tags, end, learning-curve plot) are several store
round trips: done in line they add to every trial's wall time, a visible share of short trials
(bench/README.md). Queued, they overlap the next trial's training. The queue keeps the order in
which calls were submitted (a run is created before it is logged to, logged to before it is ended),
and `drain()` is the point where the caller knows everything queued so far is written.

The work queued when a trial ends would compete for the GIL with the search loop's own critical path
right then (telling Optuna, asking for and starting the next trial: an ask took about twice as long
while a matplotlib PNG was drawn beside it). Such calls are submitted `held`: they wait until the loop calls
`release()` once the next trial is under way (or `HOLD_SECONDS` at most, or a drain).
"""

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
HOLD_SECONDS = 5.0


class TrackingQueue:
    """Calls run one at a time, in submission order, on a background thread (or at once, in line).

    Call `drain()` before the records are needed complete (a stage's end) and `close()` when done:
    both wait for every queued call and raise the first failure, so nothing is dropped silently. A
    copy made by pickling (e.g. a trial context sent to a Dask worker) runs its calls in line: nobody
    would drain a queue in that process.
    """

    def __init__(self, background: bool = True) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="stagetune-tracking") if background else None
        self._pending: list[Future[object]] = []
        self._lock = threading.Lock()
        self._released = threading.Condition()
        self._releases = 0

    @property
    def background(self) -> bool:
        """Whether calls run on the background thread (else in line, in the caller's thread)."""
        return self._executor is not None

    def submit(self, call: Callable[[], T], held: bool = False) -> "Future[T]":
        """Queue `call`; in line, run it now (its exception propagates) and return a done future.

        `held`: it starts only after the next `release()` (or `drain()`, or HOLD_SECONDS); the calls
        queued after it wait behind it.
        """
        if self._executor is None:
            done: Future[T] = Future()
            done.set_result(call())
            return done
        if held:
            call = self._held(call, self._releases)
        with self._lock:
            future = self._executor.submit(call)
            self._pending.append(future)  # type: ignore[arg-type]
        return future

    def release(self) -> None:
        """Let the held calls queued so far start."""
        with self._released:
            self._releases += 1
            self._released.notify_all()

    def _held(self, call: Callable[[], T], ticket: int) -> Callable[[], T]:
        def after_release() -> T:
            with self._released:
                self._released.wait_for(lambda: self._releases > ticket, timeout=HOLD_SECONDS)
            return call()

        return after_release

    def drain(self) -> None:
        """Wait until every call queued so far has run; then raise the first failure among them, if any."""
        self.release()
        with self._lock:
            pending, self._pending = self._pending, []
        errors = [error for error in (future.exception() for future in pending) if error is not None]
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Drain, then stop the thread (a closed queue runs further calls in line)."""
        try:
            self.drain()
        finally:
            if self._executor is not None:
                self._executor.shutdown()
                self._executor = None

    def __getstate__(self) -> dict[str, object]:
        return {}

    def __setstate__(self, state: dict[str, object]) -> None:
        self._executor = None
        self._pending = []
        self._lock = threading.Lock()
