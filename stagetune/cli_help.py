"""Help screens without a type placeholder on flags.

Typer 0.29 prints `<bool>` after every flag (`--new <bool>`, `--help <bool>`), which reads as if the
flag took a value. Commands and groups made with these classes show flags bare, as click did.
"""

from typing import Any

from typer.core import TyperCommand, TyperGroup


def _bare_flags(params: list[Any]) -> list[Any]:
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # an empty type column; the flag's names and help stay
    return params


class FlagCommand(TyperCommand):
    """A command whose help shows flags without a type."""

    def get_params(self, ctx: Any) -> list[Any]:
        """The command's parameters (and its --help), flags without a type placeholder."""
        return _bare_flags(list(super().get_params(ctx)))


class FlagGroup(TyperGroup):
    """A command group whose help shows flags without a type."""

    def get_params(self, ctx: Any) -> list[Any]:
        """The group's parameters (and its --help), flags without a type placeholder."""
        return _bare_flags(list(super().get_params(ctx)))
