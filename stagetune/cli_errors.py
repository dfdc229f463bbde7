"""How every `stagetune` command turns a failure into a message and an exit code.

Exit codes: 2 bad input (one paragraph naming the field), 1 anything else, 130 interrupted by Ctrl-C,
143 stopped by SIGTERM (both with the command that continues the run: see `stagetune.interruption`).
"""

from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from stagetune.errors import InputError
from stagetune.interruption import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, resume_hint

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_SANITY = 0, 1, 2, 3
T = TypeVar("T")


def guarded(
    console: Console,
    action: Callable[[], T],
    verbose: bool = False,
    expected: tuple[type[Exception], ...] = (),
) -> T:
    """Run `action`; an InputError exits 2 with its paragraph, an `expected` error exits 1 with its
    message alone, anything else exits 1 with its type (and the traceback when `verbose`)."""
    try:
        return action()
    except InputError as error:
        console.print(f"[red]error[/red] in [bold]{escape(error.field)}[/bold]: {escape(error.message)}")
        raise typer.Exit(EXIT_INPUT) from None
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        how = "stopped by SIGTERM" if terminated else "interrupted (Ctrl-C)"
        hint = resume_hint()
        console.print(f"[yellow]{how}[/yellow]" + (f": {escape(hint)}" if hint else ""), highlight=False)
        raise typer.Exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED) from None
    except expected as error:
        console.print(f"[red]failed[/red]: {escape(str(error))}")
        raise typer.Exit(EXIT_ERROR) from None
    except Exception as error:
        if verbose:
            console.print_exception()
        else:
            console.print(
                f"[red]failed[/red]: {type(error).__name__}: {escape(str(error))}\n"
                "(run again with --verbose for the traceback)"
            )
        raise typer.Exit(EXIT_ERROR) from None
