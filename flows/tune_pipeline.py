"""The stagetune flow: sample & rebalance -> sanity gate -> (search stages: next issue)."""

from prefect import flow

from schemas.config import PipelineConfig
from schemas.results import PipelineResult, SampleResult, SanityResult
from stagetune.stages.pipeline_run import new_run_dir
from stagetune.tracking.run_tree import RunTree, end_run, now_ms
from tasks.sample import record_sample, sample_data
from tasks.sanity import sanity_check
from tasks.tracking import close_tracking, open_tracking

NOT_YET_BUILT = "the search stages (coarse, refine, final) are not built yet, so the run stops after the sanity gate"


@flow(name="stagetune", flow_run_name="{config.name}")
def tune_pipeline(config: PipelineConfig) -> PipelineResult:
    """Run the stages in order; stop with status `sanity_failed` when the sanity gate fails.

    The data are loaded and validated before anything is written to MLflow, so bad data leaves no
    run behind. Any exception ends the parent MLflow run as FAILED before it propagates.
    """
    run_dir = new_run_dir(config)
    started = now_ms()
    sample = sample_data(config, run_dir)
    sample_ended = now_ms()
    tree = open_tracking(config, run_dir)
    try:
        record_sample(tree, sample, started, sample_ended)
        sanity = sanity_check(config, sample, tree) if config.sanity.enabled else None
    except BaseException:
        end_run(tree.client, tree.parent_run_id, "FAILED")
        raise
    stages = ["sample", "sanity"] if sanity is not None else ["sample"]
    if sanity is not None and not sanity.passed:
        message = "The sanity gate failed: " + " ".join(d.message for d in sanity.diagnoses)
        failed = _pipeline_result(config, tree, "sanity_failed", message, stages, sample, sanity)
        close_tracking(tree, failed, "FAILED")
        return failed
    message = f"Stages {', '.join(stages)} completed; {NOT_YET_BUILT}."
    result = _pipeline_result(config, tree, "stopped_after_sanity", message, stages, sample, sanity)
    close_tracking(tree, result, "FINISHED")
    return result


def _pipeline_result(
    config: PipelineConfig,
    tree: RunTree,
    status: str,
    message: str,
    stages: list[str],
    sample: SampleResult,
    sanity: SanityResult | None,
) -> PipelineResult:
    return PipelineResult.model_validate(
        {
            "name": config.name,
            "status": status,
            "message": message,
            "mlflow_parent_run_id": tree.parent_run_id,
            "mlflow_experiment_id": tree.experiment_id,
            "tracking_uri": tree.tracking_uri,
            "stages_completed": stages,
            "sample": sample,
            "sanity": sanity,
        }
    )
