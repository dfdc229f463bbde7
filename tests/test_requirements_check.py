"""The final stage starts MLflow's requirements check early (stagetune/serving/requirements_check.py).

It relies on `mlflow.utils.requirements_utils`, which MLflow does not document: these tests fail loudly if
an upgrade moves the function or its per-process cache, instead of the head start silently doing nothing.
"""

import subprocess
import sys
import textwrap


def test_the_check_fills_mlflows_cache_in_the_background() -> None:
    # A fresh process: the cache is per process and another test may have filled this one's.
    code = textwrap.dedent(
        """
        from mlflow.utils import requirements_utils
        from stagetune.serving import requirements_check
        from stagetune.serving.log_model import check_requirements_early

        assert requirements_utils._MODULES_TO_PACKAGES is None
        check_requirements_early()
        check_requirements_early()  # once per process: the second call starts nothing
        requirements_check.wait_for_requirements_check()
        assert requirements_utils._MODULES_TO_PACKAGES is not None
        assert "torch" in requirements_utils._MODULES_TO_PACKAGES
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_waiting_without_a_started_check_returns() -> None:
    code = "from stagetune.serving.requirements_check import wait_for_requirements_check as w; w(); print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
