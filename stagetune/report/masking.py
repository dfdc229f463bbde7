"""Masking secrets before anything reaches a report: key-named values, URI passwords, known secret values."""

import re
from collections.abc import Iterable, Mapping
from typing import Any

from stagetune.errors import InputError
from stagetune.settings import load_settings

MASK = "***"
_SECRET_KEY = re.compile(r"secret|password|passwd|token|key|credential", re.IGNORECASE)
# scheme://user:password@host -> scheme://user:***@host
_URI_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][\w+.-]*://[^/@:\s]*:)(?P<password>[^/@\s]+)@")


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with URI passwords and the given secret values replaced by ***."""
    masked = _URI_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", text)
    for secret in secrets:
        if len(secret) >= 4:  # masking very short values would shred ordinary text
            masked = masked.replace(secret, MASK)
    return masked


def mask_data(data: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of nested JSON data with secret-named keys' values and credentials in strings masked."""
    values = list(secrets)
    if isinstance(data, Mapping):
        return {
            key: (MASK if _SECRET_KEY.search(str(key)) and value not in (None, "") else mask_data(value, values))
            for key, value in data.items()
        }
    if isinstance(data, list | tuple):
        return [mask_data(item, values) for item in data]
    if isinstance(data, str):
        return mask_text(data, values)
    return data


def runtime_secrets() -> list[str]:
    """Secret values from the runtime settings (S3 keys), to mask wherever they appear."""
    try:
        return load_settings().secrets()
    except InputError:  # an unreadable settings file is reported by the commands that need it
        return []
