"""Progress of stages and epochs, shown by the CLI with rich; silent everywhere else.

Stage code calls `current()`; the CLI installs a `RichReporter` for the duration of a command with
`use(...)`. Deployments and tests get the silent default.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class Reporter(Protocol):
    """What stage code may tell the person watching."""

    def stage_started(self, stage: str, description: str, total: int | None = None) -> None: ...

    def stage_advanced(self, stage: str, detail: str = "", advance: int = 1) -> None: ...

    def stage_finished(self, stage: str, summary: str) -> None: ...


class SilentReporter:
    """Reports nothing."""

    def stage_started(self, stage: str, description: str, total: int | None = None) -> None:
        """Ignore."""

    def stage_advanced(self, stage: str, detail: str = "", advance: int = 1) -> None:
        """Ignore."""

    def stage_finished(self, stage: str, summary: str) -> None:
        """Ignore."""


class RichReporter:
    """One progress bar per stage, a summary line when a stage ends (thread-safe via rich)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[stage]:<8}[/bold] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"),
            console=console,
            transient=True,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> "RichReporter":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def stage_started(self, stage: str, description: str, total: int | None = None) -> None:
        """Add a bar for `stage`."""
        self.tasks[stage] = self.progress.add_task(description, total=total, stage=stage, detail="")

    def stage_advanced(self, stage: str, detail: str = "", advance: int = 1) -> None:
        """Move `stage`'s bar on."""
        if stage in self.tasks:
            self.progress.update(self.tasks[stage], advance=advance, detail=detail)

    def stage_finished(self, stage: str, summary: str) -> None:
        """Drop the bar and print one summary line."""
        if stage in self.tasks:
            self.progress.remove_task(self.tasks.pop(stage))
        self.progress.console.print(f"[green]✓[/green] [bold]{stage:<8}[/bold] {summary}")


_current: Reporter = SilentReporter()


def current() -> Reporter:
    """The reporter of the running command (silent by default)."""
    return _current


@contextmanager
def use(reporter: Reporter) -> Iterator[Reporter]:
    """Install `reporter` for the duration of a block."""
    global _current
    previous, _current = _current, reporter
    try:
        yield reporter
    finally:
        _current = previous
