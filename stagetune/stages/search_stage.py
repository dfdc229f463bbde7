"""Stages 3 and 4 without the executor: open the study and its MLflow run, ask, tell, summarise.

The flow owns the loop that submits trials (so trials run as Prefect tasks, concurrently); this
module owns everything else and never imports Prefect.
"""

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.samplers import RandomSampler
from optuna.trial import TrialState

from schemas.config import PipelineConfig
from schemas.hyperparams import HyperParams
from schemas.pipeline import SearchStageResult
from schemas.results import SampleResult, SanityResult
from schemas.search import NarrowingReport, ReusedTrial, TrialRecord
from schemas.search_space import FloatParam, SearchSpace
from schemas.stages import SearchStage, Stage
from stagetune.data.augment import pixels_of
from stagetune.data.sampling import stratified_subsample
from stagetune.data.source import LoadOptions
from stagetune.data.stage import load_stage_arrays
from stagetune.diagnosis import summarise_diagnoses
from stagetune.interruption import INTERRUPTED_REASON, clear_stop, request_stop
from stagetune.search.budget import budget_lock, claim_trial, release_trial
from stagetune.search.dead_trials import enqueue_retry, fail_dead_trials
from stagetune.search.liveness import Liveness
from stagetune.search.space import logged_hyperparams, optuna_params, space_violations, suggest_hyperparams
from stagetune.search.study import liveness_of, make_pruner, make_sampler, open_study, rdb_storage, storage_url
from stagetune.stages.lost_records import rewrite_lost_trial_records
from stagetune.stages.reuse import REUSE_ATTR, enqueue_reused, reuse_candidates, score_reused
from stagetune.stages.shared_study import (
    RECORD_ATTR,
    close_killed_trial_runs,
    close_orphan_trial_runs,
    publish_plan,
    resumed_stage_run,
    study_records,
)
from stagetune.stages.trial import TrialContext, TrialData
from stagetune.task import full_task_for, task_for
from stagetune.tracking.background import TrackingQueue
from stagetune.tracking.run_tree import RunTree, end_run, log_metrics, log_model_json, log_params, log_tags
from stagetune.tracking.study_plots import history_figure, importances_figure, parallel_coordinates_figure
from stagetune.training.loaders import load_options

LOGGER = logging.getLogger(__name__)


@dataclass
class SearchPlan:
    """A search stage in progress: its study, space, budget, trial context and finished trials."""

    stage: SearchStage
    study: optuna.Study
    space: SearchSpace
    n_trials: int
    context: TrialContext
    sampler: str
    pruner: str
    storage: str
    liveness: Liveness = field(default_factory=Liveness)
    enqueued: list[int] = field(default_factory=list)
    reused: list[ReusedTrial] = field(default_factory=list)  # coarse: the champion's and last run's points
    asked: dict[int, optuna.Trial] = field(default_factory=dict)  # asked by this process, not told yet
    records: list[TrialRecord] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    dead_checked: float = -math.inf  # time.monotonic() of the last look for dead processes' trials


def start_coarse(
    config: PipelineConfig, sample: SampleResult, sanity: SanityResult | None, tree: RunTree, run_name: str
) -> SearchPlan:
    """Stage 3: a random/QMC study over the wide space, few epochs, a stratified share of the sampled rows."""
    space = config.space
    if config.coarse.center_lr_on_range_test and sanity is not None and sanity.lr_suggestion:
        space = centre_learning_rates(space, config.model.baseline.optimizer, sanity.lr_suggestion)
    data = trial_data(
        sample,
        config.coarse.train_fraction,
        config.seed,
        full=False,
        loss=config.training.loss,
        options=load_options(config.execution),
    )
    sampler = make_sampler(config.coarse.sampler, config.seed)
    name = f"{config.search.study_name or run_name}-coarse"
    study = open_study(
        name, storage_url(config), config.search.direction, sampler, make_pruner("none", 1), liveness_of(config)
    )
    plan = _plan(config, tree, Stage.COARSE, study, space, config.coarse.n_trials, config.coarse.epochs, data, "none")
    reuse_last_run(plan, tree)
    publish_plan(plan, sample, config.coarse.train_fraction, False, config.coarse.sampler)
    return plan


def reuse_last_run(plan: SearchPlan, tree: RunTree) -> None:
    """Enqueue the champion's point and the previous run's best trials as the first coarse trials
    (see `stagetune.stages.reuse`); a resumed stage keeps the plan stored on its study."""
    config = plan.context.config
    stored = REUSE_ATTR in plan.study.user_attrs
    candidates = [] if stored else reuse_candidates(config, tree)
    plan.reused = enqueue_reused(plan.study, plan.space, config.model, plan.n_trials, candidates)
    plan.enqueued = [item.number for item in plan.reused if item.number is not None]
    if plan.reused and not stored:
        lines = [
            f"{item.label}: " + (f"trial {item.number}" if item.skipped is None else str(item.skipped))
            for item in plan.reused
        ]
        log_tags(tree.client, plan.context.stage_run_id, {"stagetune.reused": "\n".join(lines)[:5000]})
        for line in lines:
            LOGGER.info("coarse stage reuses %s", line)


def start_refine(
    config: PipelineConfig,
    sample: SampleResult,
    tree: RunTree,
    run_name: str,
    space: SearchSpace,
    coarse: SearchStageResult,
) -> SearchPlan:
    """Stage 4: TPE/GP over the narrowed space, warm-started with the best coarse trials, with pruning."""
    full = config.refine.train_data == "full"
    options = load_options(config.execution)
    data = trial_data(sample, 1.0, config.seed, full=full, loss=config.training.loss, options=options)
    seeds = top_trials(coarse.trials, config.search.direction, config.refine.warm_start)
    startup = max(len(seeds), min(10, max(1, config.refine.n_trials // 3)))
    sampler = make_sampler(config.refine.sampler, config.seed + 1, n_startup_trials=startup)
    pruner = make_pruner(config.refine.pruner, config.refine.epochs)
    name = f"{config.search.study_name or run_name}-refine"
    study = open_study(name, storage_url(config), config.search.direction, sampler, pruner, liveness_of(config))
    plan = _plan(
        config,
        tree,
        Stage.REFINE,
        study,
        space,
        config.refine.n_trials,
        config.refine.epochs,
        data,
        config.refine.pruner,
    )
    # A seed outside the narrowed space (e.g. a range clipped at a hard limit) is not enqueued.
    seeds = [r for r in seeds if not space_violations(r.hyperparams, space, config.model)]
    for record in seeds:
        plan.study.enqueue_trial(optuna_params(record.hyperparams, space, config.model), skip_if_exists=True)
        plan.enqueued.append(len(plan.enqueued))  # enqueued trials are asked first: numbers 0..k-1
    if seeds:
        log_tags(
            tree.client, plan.context.stage_run_id, {"stagetune.warm_start": ",".join(str(r.number) for r in seeds)}
        )
    publish_plan(plan, sample, 1.0, config.refine.train_data == "full", config.refine.sampler)
    return plan


def ask(plan: SearchPlan) -> tuple[optuna.Trial, HyperParams, dict[str, object]] | None:
    """The next trial and its typed hyperparameters (enqueued points first); None once the study's
    budget is used up, counting every process's trials."""
    config = plan.context.config
    # Reading every running trial at each ask costs ~7 ms; a dead process is found within a heartbeat
    # interval instead (its trials are retried, whenever they are found).
    if time.monotonic() - plan.dead_checked >= plan.liveness.heartbeat_seconds:
        fail_dead(plan)
    trial = claim_trial(plan.study, plan.storage, plan.n_trials, plan.liveness.heartbeat_seconds)
    if trial is None:
        return None
    plan.asked[trial.number] = trial
    hp = suggest_hyperparams(trial, plan.space, config.model)
    return trial, hp, dict(trial.params)


def tell(plan: SearchPlan, trial: optuna.Trial, record: TrialRecord) -> None:
    """Report a finished trial to the study (pruned/failed as such) and keep its record."""
    trial.set_user_attr(RECORD_ATTR, record.model_dump(mode="json"))
    if record.state == "COMPLETE":
        plan.study.tell(trial, record.value)
    elif record.state == "PRUNED":
        plan.study.tell(trial, state=TrialState.PRUNED)
    else:
        trial.set_user_attr("fail_reason", record.fail_reason or "unknown")
        plan.study.tell(trial, state=TrialState.FAIL)
    release_trial(trial, plan.storage, plan.liveness.heartbeat_seconds)
    plan.asked.pop(trial.number, None)
    plan.records.append(record)


def trials_started(plan: SearchPlan) -> None:
    """The loop has started its next trials: let finished trials' held MLflow records be written now."""
    if plan.context.tracking is not None:
        plan.context.tracking.release()


def abandon(plan: SearchPlan, waiters: dict[int, Callable[[], TrialRecord | None]]) -> None:
    """The search stopped (Ctrl-C, SIGTERM, an error): stop the trials in flight and leave both stores agreeing.

    `waiters` maps the number of each trial this process started to a call that waits for its record
    (None: the trial raised). The trials stop at their next epoch; one that finished first is told as
    usual, an interrupted one, or one asked but never started, is failed with its retry enqueued (its
    MLflow run, if any, ends KILLED). Then what the finished trials queued for MLflow is written, and
    the stage run is ended KILLED (a resumed attempt reopens it).
    """
    request_stop(plan.context.stage_run_id)
    try:
        for number, trial in list(plan.asked.items()):
            try:
                _settle(plan, trial, waiters.get(number))
            except Exception as error:  # already stopping: a store error must not hide why (a later attempt
                # finds the trial dead and retries it)
                LOGGER.warning("%s trial %d was not recorded as stopped: %s", plan.stage, number, error)
                release_trial(trial, plan.storage, plan.liveness.heartbeat_seconds)
            plan.asked.pop(number, None)
    finally:
        _close_tracking(plan, log_failure=True)
        try:  # already stopping: a tracking error must not hide why
            end_run(plan.context.tree.client, plan.context.stage_run_id, "KILLED")
        except Exception as error:
            LOGGER.warning("%s stage: its MLflow run was not ended: %s", plan.stage, error)


def _settle(plan: SearchPlan, trial: optuna.Trial, waiter: Callable[[], TrialRecord | None] | None) -> None:
    record = None if waiter is None else waiter()
    if waiter is not None and record is None:  # it raised: left to the dead-trial search of a later attempt
        release_trial(trial, plan.storage, plan.liveness.heartbeat_seconds)
    elif record is not None and record.fail_reason != INTERRUPTED_REASON:
        tell(plan, trial, record)  # it finished before it saw the stop
    else:  # interrupted, or asked and never started: FAIL, and its retry queued in the same lock
        with budget_lock(plan.storage, plan.study.study_name):
            if record is None:
                trial.set_user_attr("fail_reason", INTERRUPTED_REASON)
                plan.study.tell(trial, state=TrialState.FAIL)
                release_trial(trial, plan.storage, plan.liveness.heartbeat_seconds)
            else:
                tell(plan, trial, record)
            enqueue_retry(plan.study, trial.study._storage.get_trial(trial._trial_id), plan.liveness.max_retries)


def fail_dead(plan: SearchPlan) -> list[int]:
    """Mark the trials of dead processes FAIL (their retries enqueued) and close their MLflow runs
    as KILLED; return their numbers."""
    plan.dead_checked = time.monotonic()
    killed = fail_dead_trials(plan.study, plan.storage, plan.liveness)
    if killed:
        close_killed_trial_runs(plan.study, killed)
    return [trial.number for trial in killed]


def others_running(plan: SearchPlan) -> bool:
    """Whether any trial of the study is still running or waiting to run, after failing dead ones."""
    fail_dead(plan)
    states = (TrialState.RUNNING, TrialState.WAITING)
    return bool(plan.study.get_trials(deepcopy=False, states=states))


def pruning_reporter(trial: optuna.Trial, storage: str) -> "PruningReporter":
    """The `report(epoch, value) -> should_prune` callback a trial gets instead of the Optuna trial.

    In this process it reports through the asked trial itself; it also names the trial (storage URL,
    study, number), so a pickled copy reports to the same study from any process that reaches the
    storage (a Dask worker).
    """
    return PruningReporter(storage, trial.study.study_name, trial.number, trial.study.pruner, trial)


@dataclass
class PruningReporter:
    """Forwards per-epoch values to Optuna and asks its pruner whether to stop.

    `trial`, the asked trial, is used in the process that asked for it; it is never pickled, and a
    copy in another process rebuilds it from the RDB storage once, over one storage (one SQLAlchemy
    engine) per process and URL.
    """

    storage: str
    study_name: str
    number: int
    pruner: BasePruner
    trial: optuna.Trial | None = field(default=None, repr=False, compare=False)

    def __call__(self, epoch: int, value: float) -> bool:
        if not math.isfinite(value):
            return False
        trial = self.trial or self._load_trial()
        trial.report(value, epoch)
        return bool(trial.should_prune())

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "trial": None}

    def _load_trial(self) -> optuna.Trial:
        storage = rdb_storage(self.storage)
        # The sampler is never asked here; a random one avoids building the stage's sampler per trial.
        study = optuna.load_study(
            study_name=self.study_name, storage=storage, sampler=RandomSampler(), pruner=self.pruner
        )
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(self.study_name), self.number
        )
        self.trial = optuna.Trial(study, trial_id)
        return self.trial


def finish(plan: SearchPlan) -> SearchStageResult:
    """Summarise the stage in its MLflow run (best trial, counts, plots) and end that run, once every
    trial's own records are written."""
    _close_tracking(plan, log_failure=False)
    records = study_records(plan)
    config, client, run_id = plan.context.config, plan.context.tree.client, plan.context.stage_run_id
    complete = [r for r in records if r.state == "COMPLETE" and r.value is not None and math.isfinite(r.value)]
    best = top_trials(complete, config.search.direction, 1)
    counts = {state: sum(r.state == state for r in records) for state in ("COMPLETE", "PRUNED", "FAIL")}
    result = SearchStageResult(
        stage=plan.stage,
        study_name=plan.study.study_name,
        sampler=plan.sampler,
        pruner=plan.pruner,
        objective=config.search.objective,
        direction=config.search.direction,
        epochs=plan.context.epochs,
        n_train_rows=len(plan.context.data.y_train),
        space=plan.space,
        enqueued=plan.enqueued,
        reused=score_reused(plan.reused, records, config.search.direction),
        counts=counts,
        best=best[0] if best else None,
        trials=records,
        diagnosis=summarise_diagnoses([r.diagnosis for r in records if r.diagnosis]),
        mlflow_run_id=run_id,
        seconds=time.perf_counter() - plan.started,
    )
    rows = [(f"trials/{state.lower()}", float(n), 0) for state, n in counts.items()]
    if result.best is not None and result.best.value is not None:
        rows.append(("best/objective", result.best.value, 0))
        best_params = logged_hyperparams(result.best.hyperparams, plan.context.config.model)
        log_params(client, run_id, {f"best.{k}": v for k, v in best_params.items()})
        log_tags(client, run_id, {"stagetune.best_trial": str(result.best.number)})
    log_metrics(client, run_id, rows)
    log_tags(client, run_id, {"stagetune.diagnosis_summary": result.diagnosis.message[:5000]})
    log_model_json(client, run_id, result, f"results/{plan.stage}.json")
    _log_study_plots(plan, records)
    rewrite_lost_trial_records(plan)  # told trials of a killed attempt, whose records were still queued
    close_orphan_trial_runs(plan.context.tree, run_id)
    end_run(client, run_id, "FINISHED")
    return result


def top_trials(records: list[TrialRecord], direction: str, k: int) -> list[TrialRecord]:
    """The k best COMPLETE trials (ties broken by trial number)."""
    complete = [r for r in records if r.state == "COMPLETE" and r.value is not None and math.isfinite(r.value)]
    sign = 1.0 if direction == "minimize" else -1.0
    return sorted(complete, key=lambda r: (sign * (r.value or 0.0), r.number))[:k]


def trial_data(
    sample: SampleResult,
    fraction: float,
    seed: int,
    full: bool,
    loss: str = "auto",
    options: LoadOptions | None = None,
) -> TrialData:
    """The rows a stage's trials train on: all or a stratified share of the sampled rows, or the full split.

    `options` (DataLoader workers, pinned memory) apply to an indexed source's lazily read rows.
    """
    arrays = load_stage_arrays(sample, options)
    if full:
        task = full_task_for(sample, loss)
        return TrialData(
            arrays.X_train, arrays.y_train, arrays.X_val, arrays.y_val, sample.input_shape, task, pixels_of(sample)
        )
    task = task_for(sample, loss)
    x, y = arrays.X_train_sampled, arrays.y_train_sampled
    if fraction < 1.0:
        keep = stratified_subsample(task.strata(y), max(1, round(fraction * len(y))), np.random.default_rng(seed))
        x, y = x[keep], y[keep]
    return TrialData(x, y, arrays.X_val_sampled, arrays.y_val_sampled, sample.input_shape, task, pixels_of(sample))


def centre_learning_rates(space: SearchSpace, optimizer: str, suggestion: float) -> SearchSpace:
    """Shift every optimizer's log learning-rate range so the baseline optimizer's is centred on `suggestion`."""
    reference = space.learning_rate.get(optimizer)  # type: ignore[call-overload]
    if reference is None:
        return space
    shift = math.log10(suggestion) - (math.log10(reference.low) + math.log10(reference.high)) / 2
    moved = {
        name: FloatParam(low=max(1e-6, param.low * 10**shift), high=min(1.0, param.high * 10**shift), scale=param.scale)
        for name, param in space.learning_rate.items()
    }
    return space.model_copy(update={"learning_rate": moved})


def _plan(
    config: PipelineConfig,
    tree: RunTree,
    stage: SearchStage,
    study: optuna.Study,
    space: SearchSpace,
    n_trials: int,
    epochs: int,
    data: TrialData,
    pruner: str,
) -> SearchPlan:
    sampler = getattr(study.sampler, "name", type(study.sampler).__name__)
    run_id = resumed_stage_run(study, tree)
    if run_id is None:
        run_id = tree.start_stage(stage)
        params = {"study": study.study_name, "sampler": sampler, "pruner": pruner, "n_trials": n_trials}
        log_params(tree.client, run_id, {**params, "epochs": epochs, "objective": config.search.objective})
        log_params(tree.client, run_id, {"train_rows": len(data.y_train)})
        log_tags(tree.client, run_id, {"stagetune.study": study.study_name})
    clear_stop(run_id)  # a stage resumed in this process after a stop runs its trials again
    # The pipeline's own trials record themselves on a background thread (drained in `finish`/`abandon`).
    tracking = TrackingQueue()
    context = TrialContext(config, tree, stage, run_id, study.study_name, epochs, data, tracking)
    return SearchPlan(stage, study, space, n_trials, context, sampler, pruner, storage_url(config), liveness_of(config))


def _log_study_plots(plan: SearchPlan, records: list[TrialRecord]) -> None:
    config, client, run_id = plan.context.config, plan.context.tree.client, plan.context.stage_run_id
    minimize = config.search.direction == "minimize"
    client.log_figure(run_id, history_figure(records, config.search.objective, minimize), "plots/history.png")
    figure = parallel_coordinates_figure(records, config.search.objective, minimize)
    client.log_figure(run_id, figure, "plots/parallel_coordinates.png")
    if sum(r.state == "COMPLETE" for r in records) >= 3:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = optuna.importance.get_param_importances(plan.study)
        except (ValueError, RuntimeError) as error:  # e.g. a single parameter varied, or all values equal
            log_tags(client, run_id, {"stagetune.importances": f"not computed: {error}"[:500]})
        else:
            if importances:
                client.log_figure(run_id, importances_figure(importances), "plots/param_importances.png")


def _close_tracking(plan: SearchPlan, log_failure: bool) -> None:
    tracking = plan.context.tracking
    if tracking is None:
        return
    if not log_failure:
        tracking.close()
        return
    try:  # already failing: a tracking error must not hide the error that stopped the search
        tracking.close()
    except Exception as error:
        LOGGER.warning("%s stage: a trial's MLflow records were not all written: %s", plan.stage, error)


def record_narrowing(plan: SearchPlan, report: NarrowingReport) -> None:
    """The narrowing explanation and the narrowed space, in the refinement stage's run."""
    client, run_id = plan.context.tree.client, plan.context.stage_run_id
    log_model_json(client, run_id, report, "results/narrowing.json")
    log_model_json(client, run_id, plan.space, "results/narrowed_space.json")
    log_tags(client, run_id, {"stagetune.narrowing": "fallback" if report.fallback else "narrowed"})
    if not report.fallback:
        params = {f"space.{c.name}": c.new.model_dump(mode="json") for c in report.changes}
        log_params(client, run_id, params)
