"""Retuning that builds on the last run: known good points enqueued as the first coarse trials.

Two sources, both read from MLflow: the registered model's champion (its hyperparameters are the
params of the final-stage run the version was registered from) and the previous finished run of
the same config (its best refinement trials, then its best coarse trials, from the
`results/pipeline.json` it attached). A point the current search space cannot produce is listed
with the reason and not enqueued. The plan is stored on the study, so a resumed run neither
enqueues the points twice nor changes its mind because a new champion appeared meanwhile.
"""

import json
import logging
import math
from typing import Any

import optuna
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from schemas.config import ModelConfig, PipelineConfig
from schemas.hyperparams import HyperParams
from schemas.pipeline import PipelineResult
from schemas.search import ReusedTrial, TrialRecord
from schemas.search_space import SearchSpace
from schemas.stages import SearchStage
from stagetune.models.registry import tuned_fields
from stagetune.search.space import optuna_params, space_violations, user_param_name
from stagetune.tracking.run_tree import PIPELINE_TAG, RunTree

LOGGER = logging.getLogger(__name__)
REUSE_ATTR = "stagetune.reused"  # study user attr: the reuse plan, as ReusedTrial JSON
TRIAL_REUSE_ATTR = "stagetune.reused_from"  # user attr of an enqueued trial: its ReusedTrial label
CHAMPION_ALIAS = "champion"
VERSION_PIPELINE_TAG = "stagetune.pipeline_run"  # set on each version by stagetune.registry.champion
PIPELINE_RESULT_ARTIFACT = "results/pipeline.json"


def reuse_candidates(config: PipelineConfig, tree: RunTree) -> list[ReusedTrial]:
    """The champion's point and the previous run's best trials, as the config asks (none on a first run)."""
    client = tree.client
    found: list[ReusedTrial] = []
    if config.coarse.reuse_champion:
        champion = champion_point(client, config.tracking.registered_model or config.name, config.model)
        found += [] if champion is None else [champion]
    if config.coarse.reuse_previous:
        found += previous_run_points(client, tree, config.name, config.search.direction, config.coarse.reuse_previous)
    return found


def champion_point(client: MlflowClient, model_name: str, model: ModelConfig) -> ReusedTrial | None:
    """The champion version's hyperparameters, read from the params of the run it was registered from."""
    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
    except MlflowException:  # no such model or no champion yet: a first run
        return None
    label = f"{model_name} v{version.version} (champion)"
    sources = [version.run_id, (version.tags or {}).get(VERSION_PIPELINE_TAG)]
    for run_id, prefix in zip(sources, ("", "best."), strict=True):
        if not run_id:
            continue
        try:
            params = client.get_run(run_id).data.params
        except MlflowException as error:
            LOGGER.warning("%s: run %s cannot be read (%s)", label, run_id, error.error_code)
            continue
        hp = hyperparams_from_logged(params, model, prefix)
        if hp is not None:
            metric = _float((version.tags or {}).get("stagetune.metric_value"))
            return ReusedTrial(
                source="champion",
                label=label,
                source_run_id=run_id,
                model_version=int(version.version),
                source_value=metric,
                hyperparams=hp,
            )
    LOGGER.warning("%s: its runs log no complete set of hyperparameters; it is not reused", label)
    return None


def hyperparams_from_logged(params: dict[str, str], model: ModelConfig, prefix: str = "") -> HyperParams | None:
    """HyperParams rebuilt from MLflow params (`run_tree.log_params` writes strings as they are, the rest
    as JSON): every field `model`'s family reads and each of its own `params.<name>` must be there; fields
    it does not read keep their baseline. None when one is missing or a value is invalid."""
    values: dict[str, Any] = model.baseline_hyperparams.model_dump(mode="json")
    own = {name: user_param_name(name) for name in model.params}
    for name in HyperParams.model_fields:
        text = params.get(prefix + name)
        if text is None:
            if name in tuned_fields(model):
                return None
            continue
        values[name] = _decoded(text)
    for name, key in own.items():
        text = params.get(prefix + key)
        if text is None:
            return None
        values["params"][name] = _decoded(text)
    try:
        return HyperParams.model_validate(values)
    except ValidationError:
        return None


def _decoded(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def previous_run_points(
    client: MlflowClient, tree: RunTree, pipeline: str, direction: str, count: int
) -> list[ReusedTrial]:
    """The `count` best trials of the last finished run of pipeline `pipeline` in this experiment:
    refinement trials first (trained longest), then coarse ones."""
    query = f"tags.`{PIPELINE_TAG}` = '{pipeline.replace(chr(39), chr(39) * 2)}' and attributes.status = 'FINISHED'"
    try:
        runs = client.search_runs([tree.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=5)
    except MlflowException as error:  # reuse is a head start, not a reason to stop the run
        LOGGER.warning("the previous runs of %s cannot be searched (%s): none reused", pipeline, error.error_code)
        return []
    previous = next((run for run in runs if run.info.run_id != tree.parent_run_id), None)
    if previous is None:
        return []
    run_id = previous.info.run_id
    try:
        text = client.download_artifacts(run_id, PIPELINE_RESULT_ARTIFACT)
        with open(text, encoding="utf-8") as handle:
            result = PipelineResult.model_validate_json(handle.read())
    except (MlflowException, OSError, ValidationError) as error:
        LOGGER.warning("the previous run %s has no readable %s: %s", run_id, PIPELINE_RESULT_ARTIFACT, error)
        return []
    points: list[ReusedTrial] = []
    for stage in (result.refine, result.coarse):
        if stage is None:
            continue
        for record in _best(stage.trials, direction)[: count - len(points)]:
            points.append(_point(record, stage.stage, run_id))
    return points


def enqueue_reused(
    study: optuna.Study, space: SearchSpace, model: ModelConfig, n_trials: int, candidates: list[ReusedTrial]
) -> list[ReusedTrial]:
    """Enqueue the candidates the space contains (at most `n_trials`, no point twice) and store the plan
    on the study; a study that already has a plan (a resumed run) keeps it and enqueues nothing."""
    stored = study.user_attrs.get(REUSE_ATTR)
    if stored is not None:
        return [ReusedTrial.model_validate(item) for item in stored]
    plan: list[ReusedTrial] = []
    seen: list[dict[str, Any]] = []
    for candidate in candidates:
        problems = space_violations(candidate.hyperparams, space, model)
        params = None if problems else optuna_params(candidate.hyperparams, space, model)
        if problems:
            skipped = "outside the search space: " + "; ".join(problems)
        elif params in seen:
            skipped = "same point as an earlier one"
        elif len(seen) >= n_trials:
            skipped = "the coarse budget is used up by earlier points"
        else:
            skipped = None
        if skipped is not None or params is None:
            plan.append(candidate.model_copy(update={"skipped": skipped}))
            continue
        seen.append(params)
        # skip_if_exists: an attempt killed before storing the plan may have enqueued it already.
        study.enqueue_trial(params, user_attrs={TRIAL_REUSE_ATTR: candidate.label}, skip_if_exists=True)
        plan.append(candidate.model_copy(update={"number": _number_of(study, candidate.label)}))
    study.set_user_attr(REUSE_ATTR, [item.model_dump(mode="json") for item in plan])
    return plan


def score_reused(reused: list[ReusedTrial], records: list[TrialRecord], direction: str) -> list[ReusedTrial]:
    """Each enqueued point's objective in this coarse stage and its rank among the completed trials."""
    ranked = [record.number for record in _best(records, direction)]
    by_number = {record.number: record for record in records}
    scored = []
    for item in reused:
        record = by_number.get(item.number) if item.number is not None else None
        if record is None:
            scored.append(item)
            continue
        rank = ranked.index(record.number) + 1 if record.number in ranked else None
        scored.append(item.model_copy(update={"value": record.value, "rank": rank}))
    return scored


def _best(records: list[TrialRecord], direction: str) -> list[TrialRecord]:
    complete = [r for r in records if r.state == "COMPLETE" and r.value is not None and math.isfinite(r.value)]
    sign = 1.0 if direction == "minimize" else -1.0
    return sorted(complete, key=lambda r: (sign * (r.value or 0.0), r.number))


def _point(record: TrialRecord, stage: SearchStage, run_id: str) -> ReusedTrial:
    return ReusedTrial(
        source="previous_run",
        label=f"run {run_id[:8]} {stage} trial {record.number}",
        source_run_id=run_id,
        source_value=record.value,
        hyperparams=record.hyperparams,
    )


def _number_of(study: optuna.Study, label: str) -> int | None:
    numbers = [t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get(TRIAL_REUSE_ATTR) == label]
    return min(numbers) if numbers else None


def _float(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None
