"""MLflow's requirements check, run while the final model trains instead of when it is logged.

`Model.log` compares the pinned requirements with what is installed, and to map packages to modules it
reads every installed distribution's file list (`importlib_metadata.packages_distributions()`): ~2-3 s
on 2 cores, once per process, cached by MLflow in a module global (bench/README.md, "The final model's
MLflow logging"). There is no public switch to skip it, so the final stage starts the same check on a
thread when it begins and `log_pyfunc_model` waits for it: the logged model and any mismatch warning are
unchanged, only the time moves off the critical path.

`mlflow.utils.requirements_utils` is not documented API: its use stays in this module, and
`tests/test_requirements_check.py` fails if an MLflow upgrade moves it.
"""

import logging
import threading

from mlflow.utils import requirements_utils

LOGGER = logging.getLogger(__name__)
_lock = threading.Lock()
_thread: threading.Thread | None = None


def start_requirements_check(requirements: list[str]) -> None:
    """Start MLflow's check of `requirements` against the installed packages (once per process)."""
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(
                target=_check, args=(requirements,), name="stagetune-requirements-check", daemon=True
            )
            _thread.start()


def wait_for_requirements_check() -> None:
    """Wait for a started check; without one, `Model.log` runs it itself."""
    with _lock:
        thread = _thread
    if thread is not None:
        thread.join()


def _check(requirements: list[str]) -> None:
    try:
        requirements_utils.warn_dependency_requirement_mismatches(requirements)
    except Exception as error:  # only a head start: Model.log repeats the check and reports for itself
        LOGGER.debug("background requirements check failed: %s", error)
