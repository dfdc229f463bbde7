"""Stopping on request: SIGTERM handled as Ctrl-C is, and the trials in flight told to stop.

Exit codes: 130 after Ctrl-C (SIGINT), 143 after SIGTERM (128 + the signal's number, as a shell
reports a process the signal ended), both with the same message: what was kept and the command
that continues the run.

SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread, so every clean-up written for
Ctrl-C runs for it too. During a flow run Prefect's engine installs its own handler: it raises
Prefect's TerminationSignal, ends the flow run as crashed, then puts the handler installed here
back and sends the signal again, which raises `Terminated` from there.

A search loop that stops (an interruption or an error) asks its trials in flight to stop at their
next epoch (`request_stop`), waits for them, and records each consistently in Optuna and MLflow.
"""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn

EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM
INTERRUPTED_REASON = (
    "interrupted: the run was stopped during this trial (Ctrl-C, SIGTERM or an error); retried on resume"
)

_lock = threading.Lock()
_stopping: set[str] = set()
_resume_hint: list[str] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised in the main thread like Ctrl-C's KeyboardInterrupt."""


class TrialInterrupted(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside a trial's epoch loop once its search asked its trials to stop."""


def _raise_terminated(signum: int, frame: FrameType | None) -> NoReturn:
    raise Terminated(f"signal {signal.Signals(signum).name}")


def stop_on_sigterm() -> None:
    """Make SIGTERM raise `Terminated` in the main thread (call from the main thread, at command start)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then hand them to the handlers in place before.

    For a few steps that must not be cut in half (a trial asked from the study and handed to a
    thread): the stop then finds the trial either not asked or running. Only the main thread receives
    Python's signals; elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def remember(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    held = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.getsignal(number) for number in held}
    deferrable = [number for number in held if previous[number] is not None]  # None: set outside Python
    for number in deferrable:
        signal.signal(number, remember)
    try:
        yield
    finally:
        for number in deferrable:
            signal.signal(number, previous[number])
        if received:
            signal.raise_signal(received[0])


def is_interruption(error: BaseException) -> bool:
    """Ctrl-C, SIGTERM, or Prefect's TerminationSignal (SIGTERM during a flow run)."""
    return isinstance(error, KeyboardInterrupt) or type(error).__name__ == "TerminationSignal"


def set_resume_hint(text: str) -> None:
    """What the stop message tells the user to run to continue (the run in progress sets it)."""
    with _lock:
        _resume_hint[:] = [text]


def resume_hint() -> str | None:
    """The last hint set in this process, if any."""
    with _lock:
        return _resume_hint[0] if _resume_hint else None


def request_stop(key: str) -> None:
    """Ask the trials of `key` (a search stage's run id) to stop at their next epoch."""
    with _lock:
        _stopping.add(key)


def clear_stop(key: str) -> None:
    """Forget a stop request (a stage that starts, or resumes in this process, runs its trials)."""
    with _lock:
        _stopping.discard(key)


def stop_requested(key: str) -> bool:
    """Whether the trials of `key` were asked to stop."""
    with _lock:
        return key in _stopping
