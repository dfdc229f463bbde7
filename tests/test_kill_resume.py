"""SIGKILL in every stage, then the same command again: nothing lost, nothing done twice."""

import os
from pathlib import Path

import pytest

from tests.conftest import subprocess_env
from tests.kill_resume import STAGES, run_campaign

pytestmark = [pytest.mark.slow]


def test_a_run_killed_in_every_stage_completes_with_nothing_lost_or_repeated(
    tmp_path: Path, prefect_server: str
) -> None:
    env = subprocess_env(tmp_path, PREFECT_API_URL=prefect_server)
    env.pop("PREFECT_HOME", None)
    campaign = run_campaign(tmp_path / "work", kills=len(STAGES), seed=int(os.environ.get("KILL_SEED", "3")), env=env)
    assert not campaign.violations, campaign.violations
    assert len(campaign.kills) == len(STAGES)
    assert {"coarse", "refine"} <= set(campaign.kills), campaign.kills  # kills landed inside the searches
