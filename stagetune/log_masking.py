"""Secrets never reach a log line: every log record is masked when it is created.

What is masked, with ***: any password inside a URL (`scheme://user:PASSWORD@host`) or a DSN
(`password=...`), and the known secret values: the runtime settings' SecretStr fields (S3 keys),
the passwords of their URLs, and the values of secret-named environment variables (…_PASSWORD,
…_TOKEN, …_SECRET…, …_AUTH_STRING).

Why the record factory: Prefect configures its handlers when it is imported (after a command
starts) and its loggers, like MLflow's, do not propagate to the root logger, so a filter on the
root's handlers would miss them. A record made by the factory is masked before any logger, filter
or handler sees it. A filter on the handlers that exist at install time also catches records
built without the factory (`logging.makeLogRecord`, e.g. from a queue or socket).
"""

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from stagetune.errors import InputError

MASK = "***"
MIN_SECRET_LENGTH = 6
"""Shorter known values are not masked: replacing every "admin" or "true" would shred ordinary text."""

_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][\w+.-]*://[^/@:\s]*:)(?P<password>[^/@\s]+)@")
_DSN_PASSWORD = re.compile(r"(?P<head>\b(?:password|passwd|pwd)\s*=\s*)(?P<password>[^\s&;,'\"]+)", re.IGNORECASE)
_SECRET_VARIABLE = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|API_KEY|CREDENTIAL|AUTH_STRING", re.IGNORECASE)


def mask_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with URL and DSN passwords and every one of `secrets` replaced by ***."""
    masked = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", text)
    masked = _DSN_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}", masked)
    for secret in secrets:
        if len(secret) >= MIN_SECRET_LENGTH:
            masked = masked.replace(secret, MASK)
    return masked


def known_secrets(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The secret values to mask: runtime settings' secrets and URL passwords, secret-named variables.

    Longest first, so a secret that contains another is masked whole.
    """
    from stagetune.settings import load_settings  # deferred: settings import pydantic-settings and the schemas

    environ = dict(os.environ if environ is None else environ)
    values = {value for name, value in environ.items() if _SECRET_VARIABLE.search(name) and value}
    values |= {m.group("password") for value in environ.values() for m in _URL_PASSWORD.finditer(value)}
    try:
        settings = load_settings(environ)
    except InputError:  # bad settings are reported (exit 2) by the command that reads them
        pass
    else:
        values |= {*settings.secrets(), *settings.url_passwords()}
    return tuple(sorted((v for v in values if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True))


def mask_record(record: logging.LogRecord, secrets: Iterable[str]) -> None:
    """Mask `record` in place: its message (with its args), its traceback text and its stack text.

    The record is left as it was when nothing in it needed masking.
    """
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: the handler reports it as it would have without us
        return
    masked = mask_secrets(message, secrets)
    if masked != message:
        record.msg, record.args = masked, ()
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        masked_text = mask_secrets(text, secrets)
        if masked_text != text:
            # Formatters print exc_text when it is set; dropping exc_info keeps handlers that render
            # the exception themselves (Rich's) from printing the secret anyway.
            record.exc_text, record.exc_info = masked_text, None
    elif record.exc_text:
        record.exc_text = mask_secrets(record.exc_text, secrets)
    if record.stack_info:
        record.stack_info = mask_secrets(record.stack_info, secrets)


class SecretMaskingFilter(logging.Filter):
    """Masks secrets in every record it sees (it never drops one)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = tuple(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask `record` in place and let it through."""
        mask_record(record, self.secrets)
        return True


class MaskingRecordFactory:
    """A log record factory that masks each record the wrapped factory makes."""

    def __init__(self, wrapped: Callable[..., logging.LogRecord], masking: SecretMaskingFilter) -> None:
        self.wrapped = wrapped
        self.masking = masking

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        """Make the record, then mask it."""
        record = self.wrapped(*args, **kwargs)
        self.masking.filter(record)
        return record


_MASKING = SecretMaskingFilter()


def install_log_masking(secrets: Iterable[str] | None = None) -> SecretMaskingFilter:
    """Mask secrets in every log record of this process from now on; idempotent.

    `secrets` defaults to `known_secrets()` of the environment now; calling again replaces them.
    Returns the filter, whose `secrets` can be inspected.
    """
    _MASKING.secrets = known_secrets() if secrets is None else tuple(secrets)
    if not isinstance(logging.getLogRecordFactory(), MaskingRecordFactory):
        logging.setLogRecordFactory(MaskingRecordFactory(logging.getLogRecordFactory(), _MASKING))
    for handler in _current_handlers():
        if _MASKING not in handler.filters:
            handler.addFilter(_MASKING)
    return _MASKING


def _current_handlers() -> list[logging.Handler]:
    loggers = [
        logging.getLogger(),
        *(x for x in logging.root.manager.loggerDict.values() if isinstance(x, logging.Logger)),
    ]
    return list({id(h): h for logger in loggers for h in logger.handlers}.values())
