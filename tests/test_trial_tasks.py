"""Each search trial stays a Prefect task run of the pipeline's flow run, named after its stage and number."""

import asyncio
import time
from typing import Any

import pytest

from tests.report_fixtures import ReportedRun, reported_run

__all__ = ["reported_run"]  # the shared session fixture (one tiny pipeline run), imported for pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _task_runs(flow_run_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    async def read() -> list[Any]:
        async with get_client() as client:
            filters = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]))
            return list(await client.read_task_runs(task_run_filter=filters))

    return asyncio.run(read())


def test_every_trial_is_a_completed_task_run_named_stage_trial_number(reported_run: ReportedRun) -> None:
    result = reported_run.result
    stages = [stage for stage in (result.coarse, result.refine) if stage is not None]
    expected = {f"{stage.stage}-trial-{t.number}" for stage in stages for t in stage.trials}
    assert len(stages) == 2
    # Task run states reach the API through Prefect's event pipeline: give it a moment after the flow ends.
    deadline = time.monotonic() + 30
    while True:
        runs = {run.name: run for run in _task_runs(reported_run.flow_run_id) if "-trial-" in run.name}
        done = set(runs) == expected and all(run.state_type.value == "COMPLETED" for run in runs.values())
        if done or time.monotonic() > deadline:
            break
        time.sleep(1)

    assert set(runs) == expected
    assert {run.state_type.value for run in runs.values()} == {"COMPLETED"}
