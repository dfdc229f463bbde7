"""Process-wide settings applied when a command starts (never at import time)."""

import contextlib
import logging
import os
import sys
import warnings

from stagetune.errors import InputError
from stagetune.secret_masking import install_log_masking
from stagetune.settings import export_client_settings, load_settings

# MLflow's own per-request retries, kept short (stagetune.tracking.io_retry owns the retry window):
# 2 quick retries (after 0 s, then 2 s) and 60 s per try instead of MLflow's 7 retries up to 120 s
# apart, which would block one upload for minutes while S3 is down. Two, not none: a keep-alive
# connection the server dropped (it does after a failed upload) is retried at once.
MLFLOW_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}
# Prefect's ephemeral API server can take most of its 20 s default start-up timeout on a busy
# machine (a cold start; bench/README.md); its analytics log "database is locked" tracebacks. MLflow prints a "View run"
# URL per run. Users can still override any of these from their environment.
QUIET_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    # The CLI reports failures itself (one paragraph, exit code); Prefect's console handler would
    # print a traceback for every failed task first. Its API handler still records everything.
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
    "PREFECT_LOGGING_SERVER_LEVEL": "ERROR",
    "PREFECT_UI_ENABLED": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    "GIT_PYTHON_REFRESH": "quiet",
    **MLFLOW_HTTP_ENV,
}


def configure_process(verbose: bool = False, *, prefect_api_url: bool = False) -> None:
    """Quiet third-party noise, pass the settings file's logins to MLflow and Prefect, and mask secrets
    in every log line; call before Prefect or MLflow are imported.

    `prefect_api_url`: also take PREFECT_API_URL from the settings file (commands that need a server).
    """
    for key, value in QUIET_DEFAULTS.items():
        if verbose and key in (
            "PREFECT_LOGGING_LEVEL",
            "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL",
            "MLFLOW_LOGGING_LEVEL",
        ):
            continue
        os.environ.setdefault(key, value)
    for name in ("mlflow", "alembic", "optuna", "urllib3", "botocore"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"mlflow(\..*)?")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    # Bad settings are reported (exit 2) by the command that reads them.
    with contextlib.suppress(InputError):
        export_client_settings(load_settings(), prefect_api_url=prefect_api_url)
    install_log_masking()
    if not verbose:
        _show_own_warnings()


def _show_own_warnings() -> None:
    # Prefect's console handler (the root's only one) is quieted to CRITICAL above: stagetune's own
    # warnings (an MLflow server being retried, a dead trial failed) still reach the terminal.
    logger = logging.getLogger("stagetune")
    if not any(getattr(handler, "_stagetune", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._stagetune = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(min(logger.level or logging.WARNING, logging.WARNING))
