"""The one secret-masking policy: what log lines, error messages and reports never show.

Rules (each value becomes ***):
- the password of any `scheme://user:PASSWORD@host` URL (`schemas.urls.redact_url`);
- a DSN password (`password=...`, `passwd=`, `pwd=`);
- in nested data (a config in a report), the value of every key whose name looks secret (`SECRET_NAME`);
- the known secret values (`known_secrets`) wherever they appear. Values the user declared secret
  (the runtime settings' SecretStr fields, URL passwords) are masked from `MIN_SECRET_LENGTH`
  characters; values only guessed to be secret from a variable's name (…_TOKEN, …_KEY, …_PASSWORD)
  from `MIN_GUESSED_SECRET_LENGTH`, because names mislead (TOKENIZERS_PARALLELISM=false) and masking
  every "false" would shred ordinary text.

Logs: why the record factory. Prefect configures its handlers when it is imported (after a command
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

from schemas.urls import URL_PASSWORD, redact_url
from stagetune.errors import InputError

MASK = "***"
MIN_SECRET_LENGTH = 4
"""Shorter values are never masked, even when declared secret: every "abc" in the text would go."""
MIN_GUESSED_SECRET_LENGTH = 6
"""Values guessed from a secret-looking variable name: shorter ones are mostly flags and words."""
SECRET_NAME = re.compile(
    r"secret|password|passwd|token|credential|auth_string|access_?key|api_?key|(?:^|[_.-])key(?:$|[_.-])", re.IGNORECASE
)
"""A variable or key name whose value is a secret (AWS_SECRET_ACCESS_KEY, PGPASSWORD, mlflow_password, GPG_KEY).

"key" counts as a word of the name only: `keypoints` or PIP_KEYRING_PROVIDER=import are not secrets, and
masking every "import" in the logs would shred them."""

_DSN_PASSWORD = re.compile(r"(?P<head>\b(?:password|passwd|pwd)\s*=\s*)(?P<password>[^\s&;,'\"]+)", re.IGNORECASE)


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with URL and DSN passwords and every one of `secrets` (from 4 characters) replaced by ***."""
    masked = _DSN_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}", redact_url(text))
    for secret in secrets:
        if len(secret) >= MIN_SECRET_LENGTH:
            masked = masked.replace(secret, MASK)
    return masked


def mask_data(data: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of nested JSON data with secret-named keys' values masked and every string masked by `mask_text`."""
    values = list(secrets)
    if isinstance(data, Mapping):
        return {
            key: (MASK if SECRET_NAME.search(str(key)) and value not in (None, "") else mask_data(value, values))
            for key, value in data.items()
        }
    if isinstance(data, list | tuple):
        return [mask_data(item, values) for item in data]
    if isinstance(data, str):
        return mask_text(data, values)
    return data


def known_secrets(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The secret values to mask: runtime settings' secrets and URL passwords, secret-named variables.

    Longest first, so a secret that contains another is masked whole.
    """
    from stagetune.settings import load_settings  # deferred: settings import pydantic-settings and the schemas

    environ = dict(os.environ if environ is None else environ)
    guessed = {v for name, v in environ.items() if SECRET_NAME.search(name) and len(v) >= MIN_GUESSED_SECRET_LENGTH}
    declared = {m.group("password") for value in environ.values() for m in URL_PASSWORD.finditer(value)}
    try:
        settings = load_settings(environ)
    except InputError:  # bad settings are reported (exit 2) by the command that reads them
        pass
    else:
        declared |= {*settings.secrets(), *settings.url_passwords()}
    values = guessed | {v for v in declared if len(v) >= MIN_SECRET_LENGTH}
    return tuple(sorted(values, key=len, reverse=True))


def mask_record(record: logging.LogRecord, secrets: Iterable[str]) -> None:
    """Mask `record` in place: its message (with its args), its traceback text and its stack text.

    The record is left as it was when nothing in it needed masking.
    """
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: the handler reports it as it would have without us
        return
    masked = mask_text(message, secrets)
    if masked != message:
        record.msg, record.args = masked, ()
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        masked_text = mask_text(text, secrets)
        if masked_text != text:
            # Formatters print exc_text when it is set; dropping exc_info keeps handlers that render
            # the exception themselves (Rich's) from printing the secret anyway.
            record.exc_text, record.exc_info = masked_text, None
    elif record.exc_text:
        record.exc_text = mask_text(record.exc_text, secrets)
    if record.stack_info:
        record.stack_info = mask_text(record.stack_info, secrets)


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
