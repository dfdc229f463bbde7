"""The stagetune flow: sample & rebalance -> sanity gate -> coarse search -> narrowing -> refinement -> final."""

import shutil
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from prefect import Flow, flow
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from flows.attempts import open_attempt, record_attempt
from flows.runners import THREAD_POOL_WORKERS, make_task_runner, require_configured_runner
from flows.search import run_search
from schemas.config import ExecutionConfig, PipelineConfig
from schemas.final import FinalResult
from schemas.pipeline import PipelineResult, RegisteredModel, SearchStageResult
from schemas.results import SampleResult, SanityResult
from schemas.stages import Stage
from stagetune import progress
from stagetune.data.defaults import with_data_defaults
from stagetune.errors import InputError
from stagetune.interruption import is_interruption, set_resume_hint
from stagetune.run_store import PipelineRun
from stagetune.stages.final_members import search_row_epochs
from stagetune.stages.final_stage import test_line
from stagetune.store_check import check_stores_writable
from stagetune.tracking.run_tree import RunTree, end_run, now_ms
from stagetune.training.reproducibility import cpu_threads, use_deterministic_algorithms
from tasks.report import publish_tuning_report
from tasks.sample import record_sample, sample_data
from tasks.sanity import sanity_check
from tasks.stages import narrow_space, open_coarse, open_refine, train_final
from tasks.tracking import close_tracking, open_tracking

# Threads for trial tasks; the search loop itself keeps at most `execution.concurrency` in flight.
TRIAL_THREADS: ThreadPoolTaskRunner[Any] = ThreadPoolTaskRunner(max_workers=THREAD_POOL_WORKERS)
M = TypeVar("M", bound=BaseModel)


# Prefect's TaskRunner generic is invariant in its future type, so its own thread runner needs the ignore.
@flow(name="stagetune", flow_run_name="{config.name}", task_runner=TRIAL_THREADS)  # type: ignore[arg-type]
def tune_pipeline(config: PipelineConfig, resume: str | None = None, new: bool = False) -> PipelineResult:
    """Run the five stages in order and return every stage's result.

    Continues an unfinished run of the same config (or the run named by `resume`; `new` always starts
    a fresh one): stages whose results are stored are not run again, the searches continue their
    Optuna studies, and the MLflow parent run is reused. The data are loaded and validated before
    anything is written to MLflow, so bad data leaves no run behind. A failed sanity gate stops the
    run (status `sanity_failed`) before any search; any exception ends the parent MLflow run as
    FAILED (the run stays resumable) before it propagates.
    """
    require_configured_runner(config.execution)
    use_deterministic_algorithms(config.execution.deterministic)  # before any CUDA work (cuBLAS reads it once)
    check_stores_writable(config)  # a read-only store is refused before the run folder exists
    run, sample = open_attempt(config, resume, new)
    try:
        return _attempt(config, run, sample)
    except InputError:
        if not run.state.stages_done and run.state.parent_run_id is None:
            shutil.rmtree(run.dir, ignore_errors=True)  # bad input: nothing to resume, nothing left behind
        else:
            run.update(status="failed", message="invalid input")
        raise
    except BaseException as error:
        run.update(status="failed", message=f"{type(error).__name__}: {error}"[:2000])
        raise
    finally:
        run.release()


def configured_pipeline(execution: ExecutionConfig) -> Flow[..., PipelineResult]:
    """The flow on the task runner `execution` asks for: the flow itself for the thread pool it has already
    (`with_options` builds a new flow, its parameter schema included: ~0.1 s of CPU at the start of a run)."""
    if execution.task_runner == "threads":
        return tune_pipeline
    return tune_pipeline.with_options(task_runner=make_task_runner(execution))


def _attempt(config: PipelineConfig, run: PipelineRun, sample: SampleResult | None) -> PipelineResult:
    record_attempt(run)
    set_resume_hint(f"finished work is kept; continue with: stagetune run --resume {run.dir}")
    if run.resumed:
        done = ", ".join(run.state.stages_done) or "none"
        _announce(f"resuming {run.dir.name} (attempt {run.state.attempts}; stages done: {done})")
    else:
        _announce(f"new run {run.dir.name} in {run.dir.parent} (if stopped: stagetune run --resume {run.dir.name})")
    started = now_ms()
    fresh_sample = sample is None
    if sample is None:
        sample = sample_data(config, run.dir)
    else:
        _restored(Stage.SAMPLE, run)
    sample_ended = now_ms()
    config = with_data_defaults(config, sample)  # auto objective, champion metric, rebalancing: from the labels
    tree = open_tracking(config, run)
    try:
        if fresh_sample:
            record_sample(tree, sample, started, sample_ended)
            run.save(Stage.SAMPLE, sample)
        result = _stages(config, sample, tree, run)
    except BaseException as error:
        end_run(tree.client, tree.parent_run_id, "KILLED" if is_interruption(error) else "FAILED")
        raise
    close_tracking(tree, result, "FINISHED" if result.status == "completed" else "FAILED")
    run.save("pipeline", result)
    if config.tracking.report:
        publish_tuning_report(result, tree)
    run.update(status=result.status, message=result.message[:2000])
    return result


def _stages(config: PipelineConfig, sample: SampleResult, tree: RunTree, run: PipelineRun) -> PipelineResult:
    base: dict[str, Any] = {
        "name": config.name,
        "mlflow_parent_run_id": tree.parent_run_id,
        "mlflow_experiment_id": tree.experiment_id,
        "tracking_uri": tree.tracking_uri,
        "sample": sample,
    }
    _share_cpu_threads(config)  # from the sanity stage on: each stage's numbers then depend on the config alone
    sanity = None
    if config.sanity.enabled:
        sanity = _stage(run, Stage.SANITY, SanityResult, lambda: sanity_check(config, sample, tree))
    stages = [Stage.SAMPLE, Stage.SANITY] if sanity is not None else [Stage.SAMPLE]
    if sanity is not None and not sanity.passed:
        message = "The sanity gate failed: " + " ".join(d.message for d in sanity.diagnoses)
        return PipelineResult(**base, status="sanity_failed", message=message, stages_completed=stages, sanity=sanity)

    concurrency, run_name = config.execution.concurrency, run.dir.name
    coarse = _stage(
        run,
        Stage.COARSE,
        SearchStageResult,
        lambda: run_search(open_coarse(config, sample, sanity, tree, run_name), concurrency),
    )
    stages.append(Stage.COARSE)
    narrowed = narrow_space(config, coarse)  # a pure function of the coarse result: recomputed on resume
    refine = _stage(
        run,
        Stage.REFINE,
        SearchStageResult,
        lambda: run_search(open_refine(config, sample, tree, run_name, narrowed, coarse), concurrency),
    )
    stages.append(Stage.REFINE)
    best = _best_trial(refine, coarse)
    common = {**base, "sanity": sanity, "coarse": coarse, "refine": refine}
    common |= {"narrowed_space": narrowed[0], "narrowing": narrowed[1]}
    if best is None:
        message = "No coarse or refinement trial completed: see the trials' fail reasons and diagnoses in MLflow."
        return PipelineResult(**common, status="search_failed", message=message, stages_completed=stages)

    search_compute = search_row_epochs([coarse, refine], config.search.resolved_cv_folds)
    final = _stage(
        run,
        Stage.FINAL,
        FinalResult,
        lambda: train_final(config, sample, best.hyperparams, tree, run.dir, search_compute),
    )
    stages.append(Stage.FINAL)
    decision = final.registry
    registered = None
    if decision is not None:
        registered = RegisteredModel(
            name=decision.model_name, version=decision.version, alias=decision.alias, decision=decision.decision
        )
    test = final.test
    message = (
        f"Best trial: {best.number} of the {'refinement' if best in refine.trials else 'coarse'} stage; "
        f"test {test_line(test)}."
    )
    if decision is not None:
        message += f" Registered as {decision.model_name} v{decision.version} ({decision.alias}): {decision.reason}"
    return PipelineResult(
        **common,
        status="completed",
        message=message,
        stages_completed=stages,
        best_hyperparams=best.hyperparams,
        test_metrics=test.summary_metrics(),
        registered_model=registered,
        final=final,
    )


def _stage(run: PipelineRun, stage: Stage, model: type[M], compute: Callable[[], M]) -> M:
    """The stage's stored result when an earlier attempt finished it, else computed now and stored."""
    stored = run.load(stage, model)
    if stored is not None:
        _restored(stage, run)
        return stored
    result = compute()
    run.save(stage, result)
    return result


def _announce(text: str) -> None:
    reporter = progress.current()
    reporter.stage_started("run", text)
    reporter.stage_finished("run", text)


def _restored(stage: Stage, run: PipelineRun) -> None:
    reporter = progress.current()
    reporter.stage_started(stage, "stored result")
    reporter.stage_finished(stage, f"done in an earlier attempt of run {run.dir.name}: not run again")


def _best_trial(refine: SearchStageResult, coarse: SearchStageResult) -> Any:
    """The refinement's best trial; the coarse best when no refinement trial completed."""
    return refine.best if refine.best is not None else coarse.best


def _share_cpu_threads(config: PipelineConfig) -> None:
    # Set on every run, not only concurrent ones: a process may run pipelines of several concurrencies.
    if not torch.cuda.is_available():
        torch.set_num_threads(cpu_threads(config.execution))
