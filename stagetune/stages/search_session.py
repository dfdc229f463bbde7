"""One search stage's study as this process works on it: open or join, enqueue, ask, tell, stop, finish.

A `SearchSession` holds the study, the stage's space and budget, the trial context and what this
process has asked and told. The pipeline opens one per stage (`SearchSession.open`, which creates
the study or resumes it); a `stagetune worker` joins the published stage of a running pipeline
(`SearchSession.join`). Both run their trials through `stagetune.stages.search_loop.run_trials`.
Nothing here imports Prefect.
"""

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import optuna
from optuna.trial import TrialState

from schemas.config import PipelineConfig
from schemas.hyperparams import HyperParams
from schemas.pipeline import SearchStageResult, SharedStudyPlan
from schemas.results import SampleResult
from schemas.search import NarrowingReport, ReusedTrial, TrialRecord
from schemas.search_space import SearchSpace
from schemas.stages import SearchStage
from stagetune.diagnosis import summarise_stage
from stagetune.interruption import INTERRUPTED_REASON, clear_stop, request_stop
from stagetune.search.budget import Blocked, budget_lock, claim_trial, release_trial
from stagetune.search.dead_trials import enqueue_retry, fail_dead_trials
from stagetune.search.liveness import Liveness
from stagetune.search.pruning_reporter import PruningReporter, pruning_reporter
from stagetune.search.seeding import TrialSeededSampler
from stagetune.search.space import optuna_params, space_violations, suggest_hyperparams
from stagetune.search.study import liveness_of, make_pruner, open_study, storage_url
from stagetune.stages.lost_records import rewrite_lost_trial_records
from stagetune.stages.reuse import REUSE_ATTR, enqueue_reused, reuse_candidates, score_reused
from stagetune.stages.search_summary import log_stage_summary, state_counts, top_trials
from stagetune.stages.shared_study import (
    RECORD_ATTR,
    close_killed_trial_runs,
    close_orphan_trial_runs,
    publish_plan,
    resumed_stage_run,
    study_records,
)
from stagetune.stages.trial import TrialContext, TrialData
from stagetune.tracking.background import TrackingQueue
from stagetune.tracking.run_tree import RunTree, end_run, log_model_json, log_params, log_tags

LOGGER = logging.getLogger(__name__)
# What the loop knows of a trial it started when the search stops: a call that waits for its record
# (None: the trial raised), or None when the trial was asked but never started.
Waiter = Callable[[], TrialRecord | None] | None


@dataclass
class SearchSession:
    """A search stage in progress in this process: its study, space, budget, trial context and trials."""

    stage: SearchStage
    study: optuna.Study
    space: SearchSpace
    n_trials: int
    context: TrialContext
    sampler: str
    pruner: str
    storage: str
    liveness: Liveness = field(default_factory=Liveness)
    # search.sync_window: trial n is asked once the trials below (n // window) * window have finished, and
    # its sampler and pruner see only those (`stagetune.search.sync_window`). None: no window (tests).
    sync_window: int | None = None
    # False for a worker that joined a pipeline's stage: the stage's MLflow run is the pipeline's to end.
    owns_stage_run: bool = True
    enqueued: list[int] = field(default_factory=list)
    reused: list[ReusedTrial] = field(default_factory=list)  # coarse: the champion's and last run's points
    asked: dict[int, optuna.Trial] = field(default_factory=dict)  # asked by this process, not told yet
    records: list[TrialRecord] = field(default_factory=list)  # told by this process
    started: float = field(default_factory=time.perf_counter)
    dead_checked: float = -math.inf  # time.monotonic() of the last look for dead processes' trials

    @classmethod
    def open(
        cls,
        config: PipelineConfig,
        tree: RunTree,
        stage: SearchStage,
        study_name: str,
        sampler: TrialSeededSampler,
        pruner: Literal["median", "hyperband", "none"],
        space: SearchSpace,
        n_trials: int,
        epochs: int,
        data: TrialData,
    ) -> "SearchSession":
        """Create the stage's study and MLflow run, or resume both (same study name and storage): a
        restarted pipeline continues where it stopped. A study of another pipeline run is refused."""
        storage, liveness = storage_url(config), liveness_of(config)
        window = config.search.sync_window
        study = open_study(
            study_name, storage, config.search.direction, sampler, make_pruner(pruner, epochs, window), liveness
        )
        run_id = resumed_stage_run(study, tree)
        if run_id is None:
            run_id = tree.start_stage(stage)
            params = {"study": study_name, "sampler": sampler.name, "pruner": pruner, "n_trials": n_trials}
            log_params(tree.client, run_id, {**params, "epochs": epochs, "objective": config.search.objective})
            log_params(tree.client, run_id, {"train_rows": len(data.y_train)})
            log_tags(tree.client, run_id, {"stagetune.study": study_name})
        clear_stop(run_id)  # a stage resumed in this process after a stop runs its trials again
        # The pipeline's own trials record themselves on a background thread (drained in `finish`/`abandon`).
        context = TrialContext(config, tree, stage, run_id, study_name, epochs, data, TrackingQueue())
        return cls(stage, study, space, n_trials, context, sampler.name, pruner, storage, liveness, window)

    @classmethod
    def join(
        cls, config: PipelineConfig, study: optuna.Study, shared: SharedStudyPlan, data: TrialData
    ) -> "SearchSession":
        """A worker's session on a stage a pipeline published (`wait_for_published_study`)."""
        tree = RunTree(
            shared.tracking_uri, shared.experiment_id, shared.parent_run_id, config.tracking.io_retry_seconds
        )
        context = TrialContext(config, tree, shared.stage, shared.stage_run_id, study.study_name, shared.epochs, data)
        return cls(
            shared.stage,
            study,
            shared.space,
            shared.n_trials,
            context,
            shared.sampler,
            shared.pruner,
            storage_url(config),
            liveness_of(config),
            shared.sync_window or 1,
            owns_stage_run=False,
        )

    def enqueue_reused(self) -> None:
        """Enqueue the champion's point and the previous run's best trials as the first trials (see
        `stagetune.stages.reuse`); a resumed stage keeps the plan stored on its study."""
        config, tree = self.context.config, self.context.tree
        stored = REUSE_ATTR in self.study.user_attrs
        candidates = [] if stored else reuse_candidates(config, tree)
        self.reused = enqueue_reused(self.study, self.space, config.model, self.n_trials, candidates)
        self.enqueued = [item.number for item in self.reused if item.number is not None]
        if self.reused and not stored:
            lines = [
                f"{item.label}: " + (f"trial {item.number}" if item.skipped is None else str(item.skipped))
                for item in self.reused
            ]
            log_tags(tree.client, self.context.stage_run_id, {"stagetune.reused": "\n".join(lines)[:5000]})
            for line in lines:
                LOGGER.info("%s stage reuses %s", self.stage, line)

    def enqueue_warm_start(self, seeds: list[TrialRecord]) -> None:
        """Enqueue earlier trials' points as the first trials (a seed outside the space is left out)."""
        model = self.context.config.model
        seeds = [r for r in seeds if not space_violations(r.hyperparams, self.space, model)]
        for record in seeds:
            self.study.enqueue_trial(optuna_params(record.hyperparams, self.space, model), skip_if_exists=True)
            self.enqueued.append(len(self.enqueued))  # enqueued trials are asked first: numbers 0..k-1
        if seeds:
            tags = {"stagetune.warm_start": ",".join(str(r.number) for r in seeds)}
            log_tags(self.context.tree.client, self.context.stage_run_id, tags)

    def publish(self, sample: SampleResult, fraction: float, full: bool, sampler: str) -> None:
        """Store on the study what a joining worker needs to run this stage's trials exactly as it does."""
        tree = self.context.tree
        shared = SharedStudyPlan(
            stage=self.stage,
            n_trials=self.n_trials,
            epochs=self.context.epochs,
            space=self.space,
            train_fraction=fraction,
            full_data=full,
            sampler=sampler,
            pruner=self.pruner,
            objective=self.context.config.search.objective,
            tracking_uri=tree.tracking_uri,
            experiment_id=tree.experiment_id,
            parent_run_id=tree.parent_run_id,
            stage_run_id=self.context.stage_run_id,
            sample_fingerprint=sample.fingerprint,
            sampled_fingerprint=sample.sampled_fingerprint,
            sync_window=self.sync_window,
        )
        publish_plan(self.study, shared)

    def ask(self) -> tuple[optuna.Trial, HyperParams, dict[str, object]] | Blocked | None:
        """The next trial and its typed hyperparameters (enqueued points first); None once the study's
        budget is used up, counting every process's trials; `Blocked` while trials of the next trial's
        sync window's past still run (in this process or another): finish or wait for them, then ask again."""
        # Reading every running trial at each ask costs ~7 ms; a dead process is found within a heartbeat
        # interval instead (its trials are retried, whenever they are found).
        if time.monotonic() - self.dead_checked >= self.liveness.heartbeat_seconds:
            self.fail_dead()
        trial = claim_trial(self.study, self.storage, self.n_trials, self.liveness.heartbeat_seconds, self.sync_window)
        if trial is None or isinstance(trial, Blocked):
            return trial
        self.asked[trial.number] = trial
        hp = suggest_hyperparams(trial, self.space, self.context.config.model)
        return trial, hp, dict(trial.params)

    def pruning_reporter(self, trial: optuna.Trial) -> PruningReporter:
        """The per-epoch `report(epoch, value) -> should_prune` callback `trial` trains with."""
        return pruning_reporter(trial, self.storage)

    def tell(self, trial: optuna.Trial, record: TrialRecord) -> None:
        """Report a finished trial to the study (pruned/failed as such) and keep its record."""
        trial.set_user_attr(RECORD_ATTR, record.model_dump(mode="json"))
        if record.state == "COMPLETE":
            self.study.tell(trial, record.value)
        elif record.state == "PRUNED":
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            trial.set_user_attr("fail_reason", record.fail_reason or "unknown")
            self.study.tell(trial, state=TrialState.FAIL)
        release_trial(trial, self.storage, self.liveness.heartbeat_seconds)
        self.asked.pop(trial.number, None)
        self.records.append(record)

    def trials_started(self) -> None:
        """The loop has started its next trials: let finished trials' held MLflow records be written now."""
        if self.context.tracking is not None:
            self.context.tracking.release()

    def fail_dead(self) -> list[int]:
        """Mark the trials of dead processes FAIL (their retries enqueued) and close their MLflow runs
        as KILLED; return their numbers."""
        self.dead_checked = time.monotonic()
        killed = fail_dead_trials(self.study, self.storage, self.liveness)
        if killed:
            close_killed_trial_runs(self.study, killed)
        return [trial.number for trial in killed]

    def others_running(self) -> bool:
        """Whether any trial of the study is still running or waiting to run, after failing dead ones."""
        self.fail_dead()
        states = (TrialState.RUNNING, TrialState.WAITING)
        return bool(self.study.get_trials(deepcopy=False, states=states))

    def abandon(self, waiters: dict[int, Waiter]) -> None:
        """The search stopped (Ctrl-C, SIGTERM, an error): stop the trials in flight and leave both stores agreeing.

        `waiters` maps the number of each trial this process started to a call that waits for its record
        (None: the trial raised). The trials stop at their next epoch; one that finished first is told as
        usual, an interrupted one, or one asked but never started, is failed with its retry enqueued (its
        MLflow run, if any, ends KILLED). Then what the finished trials queued for MLflow is written, and
        the stage run, when this session owns it, is ended KILLED (a resumed attempt reopens it).
        """
        request_stop(self.context.stage_run_id)
        try:
            for number, trial in list(self.asked.items()):
                try:
                    self._settle(trial, waiters.get(number))
                except Exception as error:  # already stopping: a store error must not hide why (a later
                    # attempt finds the trial dead and retries it)
                    LOGGER.warning("%s trial %d was not recorded as stopped: %s", self.stage, number, error)
                    release_trial(trial, self.storage, self.liveness.heartbeat_seconds)
                self.asked.pop(number, None)
        finally:
            self._close_tracking(log_failure=True)
            if self.owns_stage_run:
                try:  # already stopping: a tracking error must not hide why
                    end_run(self.context.tree.client, self.context.stage_run_id, "KILLED")
                except Exception as error:
                    LOGGER.warning("%s stage: its MLflow run was not ended: %s", self.stage, error)

    def _settle(self, trial: optuna.Trial, waiter: Waiter) -> None:
        record = None if waiter is None else waiter()
        if waiter is not None and record is None:  # it raised: left to the dead-trial search of a later attempt
            release_trial(trial, self.storage, self.liveness.heartbeat_seconds)
        elif record is not None and record.fail_reason != INTERRUPTED_REASON:
            self.tell(trial, record)  # it finished before it saw the stop
        else:  # interrupted, or asked and never started: FAIL, and its retry queued in the same lock
            with budget_lock(self.storage, self.study.study_name):
                if record is None:
                    trial.set_user_attr("fail_reason", INTERRUPTED_REASON)
                    self.study.tell(trial, state=TrialState.FAIL)
                    release_trial(trial, self.storage, self.liveness.heartbeat_seconds)
                else:
                    self.tell(trial, record)
                failed = next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number)
                enqueue_retry(self.study, failed, self.liveness.max_retries)

    def finish(self) -> SearchStageResult:
        """Summarise the stage in its MLflow run (best trial, counts, plots) and end that run, once every
        trial's own records are written."""
        self._close_tracking(log_failure=False)
        config, client, run_id = self.context.config, self.context.tree.client, self.context.stage_run_id
        records = study_records(self.study, self.space, config.model)
        best = top_trials(records, config.search.direction, 1)
        result = SearchStageResult(
            stage=self.stage,
            study_name=self.study.study_name,
            sampler=self.sampler,
            pruner=self.pruner,
            objective=config.search.objective,
            direction=config.search.direction,
            epochs=self.context.epochs,
            n_train_rows=len(self.context.data.y_train),
            space=self.space,
            enqueued=self.enqueued,
            reused=score_reused(self.reused, records, config.search.direction),
            counts=state_counts(records),
            best=best[0] if best else None,
            trials=records,
            diagnosis=summarise_stage(records, config.search.direction, config.refine.narrowing),
            mlflow_run_id=run_id,
            seconds=time.perf_counter() - self.started,
        )
        log_stage_summary(client, config, result, self.study)
        rewrite_lost_trial_records(self.study, self.context)  # told trials of a killed attempt, records still queued
        close_orphan_trial_runs(self.context.tree, run_id)
        end_run(client, run_id, "FINISHED")
        return result

    def record_narrowing(self, report: NarrowingReport) -> None:
        """The narrowing explanation and the narrowed space, in the refinement stage's run."""
        client, run_id = self.context.tree.client, self.context.stage_run_id
        log_model_json(client, run_id, report, "results/narrowing.json")
        log_model_json(client, run_id, self.space, "results/narrowed_space.json")
        log_tags(client, run_id, {"stagetune.narrowing": "fallback" if report.fallback else "narrowed"})
        if not report.fallback:
            params = {f"space.{c.name}": c.new.model_dump(mode="json") for c in report.changes}
            log_params(client, run_id, params)

    def _close_tracking(self, log_failure: bool) -> None:
        tracking = self.context.tracking
        if tracking is None:
            return
        if not log_failure:
            tracking.close()
            return
        try:  # already failing: a tracking error must not hide the error that stopped the search
            tracking.close()
        except Exception as error:
            LOGGER.warning("%s stage: a trial's MLflow records were not all written: %s", self.stage, error)
