"""A pipeline run's attempts: where a resumed run starts and what its killed predecessor left behind."""

import logging
from pathlib import Path
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.states import Crashed

from schemas.config import PipelineConfig
from schemas.results import SampleResult
from schemas.stages import SEARCH_STAGES, Stage
from stagetune.data.fingerprint import dataset_fingerprint
from stagetune.data.loading import load_table
from stagetune.errors import InputError
from stagetune.run_store import PipelineRun, open_run
from stagetune.search.study import storage_url, study_exists

LOGGER = logging.getLogger(__name__)


def open_attempt(config: PipelineConfig, resume: str | None, new: bool) -> tuple[PipelineRun, SampleResult | None]:
    """The run this attempt works on and its stored Stage 1 result (None: Stage 1 runs again).

    A stored sample is only reused when the data it came from are unchanged (same content
    fingerprint); otherwise an explicitly resumed run is refused and an automatically found one is
    set aside (`superseded`) for a fresh run.
    """
    run = open_run(config, resume, new)
    try:
        sample = run.load(Stage.SAMPLE, SampleResult)
        if sample is None or _same_source(config, sample):
            if not run.resumed:
                _refuse_taken_study_names(config)
            return run, sample
    except BaseException:
        run.release()
        raise
    message = f"the data changed since run {run.state.run} sampled them ({sample.fingerprint[:12]} before)"
    if run.explicit:
        run.release()
        raise InputError("data", f"{message}: its stage results would be stale; start a new run without --resume")
    LOGGER.warning("%s: starting a new run", message)
    run.update(status="superseded", message=message)
    run.release()
    return open_attempt(config, None, new=True)


def record_attempt(run: PipelineRun) -> None:
    """Note this attempt's Prefect flow run; mark the flow run of a killed earlier attempt Crashed."""
    current = flow_run.get_id()
    earlier = [run_id for run_id in run.state.flow_run_ids if run_id != current]
    if run.resumed and earlier:
        _mark_crashed(earlier[-1], run.state.run)
    if current and current not in run.state.flow_run_ids:
        run.update(flow_run_ids=[*run.state.flow_run_ids, current])


def _same_source(config: PipelineConfig, sample: SampleResult) -> bool:
    if not Path(sample.data_path).is_file():
        return False
    if config.data.source_kind != "table":  # image folder, image CSV, py: factory: their file list / labels
        from stagetune.data.indexed_stage import indexed_content_fingerprint

        return indexed_content_fingerprint(config) == sample.fingerprint
    table = load_table(config.data, config.seed)
    return dataset_fingerprint(table.content_hash, config.data, config.sample, config.seed) == sample.fingerprint


def _refuse_taken_study_names(config: PipelineConfig) -> None:
    name = config.search.study_name
    if name is None:
        return
    storage = storage_url(config)
    for stage in SEARCH_STAGES:
        if study_exists(storage, f"{name}-{stage}"):
            raise InputError(
                "search.study_name",
                f"study {name}-{stage} already exists in {storage}: a new run needs new studies — pick another "
                "search.study_name, or continue the run that owns it (stagetune run --resume RUN)",
            )


def _mark_crashed(flow_run_id: str, run_name: str) -> None:
    try:
        with get_client(sync_client=True) as client:
            earlier = client.read_flow_run(UUID(flow_run_id))
            if earlier.state is not None and not earlier.state.is_final():
                message = f"the process stopped; run {run_name} was resumed by a later flow run"
                client.set_flow_run_state(earlier.id, Crashed(message=message), force=True)
    except Exception as error:  # another Prefect server, or the run was deleted: nothing to clean up
        LOGGER.info("could not mark the earlier flow run %s crashed: %s", flow_run_id, error)
