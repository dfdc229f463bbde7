"""Process-wide settings applied when a command starts (never at import time)."""

import logging
import os
import warnings

# Prefect's ephemeral API server takes ~15 s to start cold on 2 busy cores, close to its 20 s
# default timeout; its analytics log "database is locked" tracebacks. MLflow prints a "View run"
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
}


def configure_process(verbose: bool = False) -> None:
    """Quiet third-party noise for a command; call before Prefect or MLflow are imported."""
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
