"""The stagetune flow: sample & rebalance -> sanity gate -> coarse search -> narrowing -> refinement -> final."""

import os
from pathlib import Path
from typing import Any

import torch
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runners import require_configured_runner
from flows.search import run_search
from schemas.config import PipelineConfig
from schemas.pipeline import PipelineResult, RegisteredModel, SearchStageResult
from schemas.results import SampleResult
from stagetune.stages.pipeline_run import new_run_dir
from stagetune.tracking.run_tree import RunTree, end_run, now_ms
from tasks.report import publish_tuning_report
from tasks.sample import record_sample, sample_data
from tasks.sanity import sanity_check
from tasks.stages import narrow_space, open_coarse, open_refine, train_final
from tasks.tracking import close_tracking, open_tracking

# Threads for trial tasks; the search loop itself keeps at most `execution.concurrency` in flight.
TRIAL_THREADS: ThreadPoolTaskRunner[Any] = ThreadPoolTaskRunner(max_workers=64)


# Prefect's TaskRunner generic is invariant in its future type, so its own thread runner needs the ignore.
@flow(name="stagetune", flow_run_name="{config.name}", task_runner=TRIAL_THREADS)  # type: ignore[arg-type]
def tune_pipeline(config: PipelineConfig) -> PipelineResult:
    """Run the five stages in order and return every stage's result.

    The data are loaded and validated before anything is written to MLflow, so bad data leaves no
    run behind. A failed sanity gate stops the run (status `sanity_failed`) before any search; any
    exception ends the parent MLflow run as FAILED before it propagates.
    """
    require_configured_runner(config.execution)
    run_dir = new_run_dir(config)
    started = now_ms()
    sample = sample_data(config, run_dir)
    sample_ended = now_ms()
    tree = open_tracking(config, run_dir)
    try:
        record_sample(tree, sample, started, sample_ended)
        result = _stages(config, sample, tree, run_dir)
    except BaseException:
        end_run(tree.client, tree.parent_run_id, "FAILED")
        raise
    close_tracking(tree, result, "FINISHED" if result.status == "completed" else "FAILED")
    if config.tracking.report:
        publish_tuning_report(result, tree)
    return result


def _stages(config: PipelineConfig, sample: SampleResult, tree: RunTree, run_dir: Path) -> PipelineResult:
    base: dict[str, Any] = {
        "name": config.name,
        "mlflow_parent_run_id": tree.parent_run_id,
        "mlflow_experiment_id": tree.experiment_id,
        "tracking_uri": tree.tracking_uri,
        "sample": sample,
    }
    sanity = sanity_check(config, sample, tree) if config.sanity.enabled else None
    stages = ["sample", "sanity"] if sanity is not None else ["sample"]
    if sanity is not None and not sanity.passed:
        message = "The sanity gate failed: " + " ".join(d.message for d in sanity.diagnoses)
        return PipelineResult(**base, status="sanity_failed", message=message, stages_completed=stages, sanity=sanity)

    _share_cpu_threads(config)
    coarse = run_search(open_coarse(config, sample, sanity, tree, run_dir.name), config.execution.concurrency)
    stages.append("coarse")
    narrowed = narrow_space(config, coarse)
    refine = run_search(open_refine(config, sample, tree, run_dir.name, narrowed, coarse), config.execution.concurrency)
    stages.append("refine")
    best = _best_trial(refine, coarse)
    common = {**base, "sanity": sanity, "coarse": coarse, "refine": refine}
    common |= {"narrowed_space": narrowed[0], "narrowing": narrowed[1]}
    if best is None:
        message = "No coarse or refinement trial completed: see the trials' fail reasons and diagnoses in MLflow."
        return PipelineResult(**common, status="search_failed", message=message, stages_completed=stages)

    final = train_final(config, sample, best.hyperparams, tree, run_dir)
    stages.append("final")
    decision = final.registry
    registered = None
    if decision is not None:
        registered = RegisteredModel(
            name=decision.model_name, version=decision.version, alias=decision.alias, decision=decision.decision
        )
    test = final.test
    message = (
        f"Best trial: {best.number} of the {'refinement' if best in refine.trials else 'coarse'} stage; "
        f"test accuracy {test.accuracy:.4f}, balanced accuracy {test.balanced_accuracy:.4f}."
    )
    if decision is not None:
        message += f" Registered as {decision.model_name} v{decision.version} ({decision.alias}): {decision.reason}"
    return PipelineResult(
        **common,
        status="completed",
        message=message,
        stages_completed=stages,
        best_hyperparams=best.hyperparams,
        test_metrics={k: getattr(test, k) for k in ("accuracy", "balanced_accuracy", "macro_f1", "loss")},
        registered_model=registered,
        final=final,
    )


def _best_trial(refine: SearchStageResult, coarse: SearchStageResult) -> Any:
    """The refinement's best trial; the coarse best when no refinement trial completed."""
    return refine.best if refine.best is not None else coarse.best


def _share_cpu_threads(config: PipelineConfig) -> None:
    # Concurrent CPU trials each using every core slow each other down: split the cores between them.
    if config.execution.concurrency > 1 and not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.execution.concurrency))
