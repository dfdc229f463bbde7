"""SIGKILL inside the searches and right after the model is registered, then the same command again: nothing
lost or redone (no trial's parameters tried twice, one model version)."""

import os
from pathlib import Path

import pytest

from tests.conftest import subprocess_env
from tests.kill_resume import REGISTERED, run_campaign

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_run_killed_in_every_stage_completes_with_nothing_lost_or_repeated(
    tmp_path: Path, prefect_server: str
) -> None:
    env = subprocess_env(tmp_path, PREFECT_API_URL=prefect_server)
    env.pop("PREFECT_HOME", None)
    # Three kills here (inside the coarse search, the refinement, and right after the model version is
    # registered) keep the suite short; `python -m tests.kill_resume --kills 12` kills in every stage,
    # several times (the final training included), then once after registration.
    campaign = run_campaign(tmp_path / "work", kills=2, seed=int(os.environ.get("KILL_SEED", "3")), env=env)
    assert not campaign.violations, campaign.violations
    assert campaign.kills == ["coarse", "refine", REGISTERED]
