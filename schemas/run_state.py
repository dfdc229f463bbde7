"""A pipeline run's progress on disk: what a restarted `stagetune run` reads to continue it."""

from typing import Literal

from pydantic import Field

from schemas.base import StrictModel

RunStatus = Literal["running", "failed", "completed", "sanity_failed", "search_failed", "superseded"]
RESUMABLE: tuple[RunStatus, ...] = ("running", "failed")


class RunState(StrictModel):
    """`<workdir>/runs/<run>/state.json`, rewritten atomically after every stage."""

    run: str = Field(description="The run folder's name: what `stagetune run --resume` takes.")
    name: str = Field(description="The config's name.")
    config_fingerprint: str = Field(description="sha256 of the settings that change results (not `execution`).")
    status: RunStatus = Field(description="running (or killed while running), failed (an error), or an outcome.")
    attempts: int = Field(default=1, ge=1, description="How many times the run was started or resumed.")
    stages_done: list[str] = Field(default_factory=list, description="Stages whose result is stored in results/.")
    tracking_uri: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = Field(default=None, description="The MLflow parent run every attempt reuses.")
    flow_run_ids: list[str] = Field(default_factory=list, description="The Prefect flow run of each attempt.")
    message: str = ""
