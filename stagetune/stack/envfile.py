"""`stack.env`: the KEY=VALUE settings file `stagetune` reads through STAGETUNE_SETTINGS_FILE."""

import re
from collections.abc import Mapping
from pathlib import Path

from stagetune.atomic_file import write_text_atomically

_SHELL_SAFE = re.compile(r"[A-Za-z0-9_@%+=:,./-]*")
_HEADER = (
    "# Written by `stagetune stack up`; removed by `stagetune stack down`. Holds S3 credentials: keep it\n"
    "# private (mode 0600), outside any repository. Read by stagetune through STAGETUNE_SETTINGS_FILE.\n"
)


def format_env(values: Mapping[str, str]) -> str:
    """KEY=VALUE lines; values a shell would split are single-quoted (stagetune strips the quotes)."""
    lines = []
    for key, value in values.items():
        if "\n" in value or "'" in value:
            raise ValueError(f"{key}: a value with a newline or a single quote cannot go into an env file")
        lines.append(f"{key}={value}" if _SHELL_SAFE.fullmatch(value) else f"{key}='{value}'")
    return _HEADER + "\n".join(lines) + "\n"


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    """Write the settings file with mode 0600."""
    write_text_atomically(path, format_env(values), fsync=False, private=True)


def read_env_file(path: Path) -> dict[str, str]:
    """The KEY=VALUE pairs of an env file; empty when it does not exist."""
    if not path.is_file():
        return {}
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        key, sep, value = line.removeprefix("export ").partition("=")
        if line and not line.startswith("#") and sep:
            values[key.strip()] = value.strip().strip("'\"")
    return values
