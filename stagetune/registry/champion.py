"""Register a checkpoint as a model version and decide whether it replaces the registered model's champion.

One pipeline run registers one version, whatever attempt gets there: the version is tagged with the
pipeline's MLflow parent run id, and a resumed run (killed after the version was created) finds it,
finishes its alias decision if that was interrupted, and registers nothing new.

The rule: a new version becomes `champion` only if there is none yet, or if it beats the champion
strictly on the same metric measured on the same test data (same data fingerprint). Otherwise it is
registered as `challenger` with the reason, and the champion stays: numbers from different test
sets are not comparable, and a person decides. The read-decide-write sequence is not atomic: two
pipelines registering the same model at the same moment may both compare against the old champion.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from schemas.final import ChampionDecision
from stagetune.registry.checkpoint import read_model_args

CHAMPION: Literal["champion"] = "champion"
CHALLENGER: Literal["challenger"] = "challenger"
MODEL_ARTIFACT_DIR = "model"
MODEL_ARGS_FILE = "model_args.json"
TAG_METRIC = "stagetune.metric"
TAG_METRIC_VALUE = "stagetune.metric_value"
TAG_DATA_FINGERPRINT = "stagetune.data_fingerprint"
TAG_ROLE = "stagetune.role"
TAG_PIPELINE_RUN = "stagetune.pipeline_run"
TAG_PREVIOUS_CHAMPION = "stagetune.previous_champion"
TAG_VERSION_RUN = "stagetune.model_version_run"  # on a resumed final run: the run its reused version came from
PREVIOUS_CHAMPION_ROLE = "previous_champion"


@dataclass(frozen=True)
class Verdict:
    """The outcome of comparing a new version with the current champion."""

    decision: Literal["promoted", "kept_challenger"]
    alias: Literal["champion", "challenger"]
    reason: str
    previous_version: int | None
    previous_metric: float | None


def register_and_promote(
    client: MlflowClient,
    *,
    run_id: str,
    model_name: str,
    checkpoint_path: Path,
    metric_name: str,
    metric_value: float,
    data_fingerprint: str,
    higher_is_better: bool = True,
    pipeline_run_id: str | None = None,
) -> ChampionDecision:
    """Log the checkpoint under `model/` of `run_id`, register it as a new version and set its alias.

    The version gets tags `stagetune.metric`, `stagetune.metric_value`, `stagetune.data_fingerprint`,
    `stagetune.role` and `stagetune.pipeline_run`, the reason as its description, and alias `champion`
    or `challenger` (see the module docstring for the rule). A replaced champion is tagged
    `stagetune.role=previous_champion`. If `pipeline_run_id` already registered a version (an earlier
    attempt killed after registering), that version is the answer: no second one is created.
    """
    if not math.isfinite(metric_value):
        raise ValueError(f"{metric_name} is {metric_value}: a model without a finite test metric is not registered")
    # This run's own copy, whatever happens below: its FinalResult names `model/checkpoint.pt` of this run.
    client.log_artifact(run_id, str(checkpoint_path), artifact_path=MODEL_ARTIFACT_DIR)
    client.log_dict(run_id, read_model_args(checkpoint_path), f"{MODEL_ARTIFACT_DIR}/{MODEL_ARGS_FILE}")
    registered = _ensure_registered_model(client, model_name)
    earlier = None if pipeline_run_id is None else version_of_pipeline_run(client, model_name, pipeline_run_id)
    if earlier is not None:
        # This run's checkpoint comes from the same seeded training; the version keeps the one it was made from.
        client.set_tag(run_id, TAG_VERSION_RUN, str(earlier.run_id))
        return _finish_earlier_registration(client, registered, earlier, higher_is_better)
    champion = _champion(client, registered)
    verdict = compare_with_champion(champion, metric_name, metric_value, data_fingerprint, higher_is_better)
    # The run's artifact folder itself (not a runs:/ URI): the version stays downloadable from it directly.
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_DIR}"
    tags = {
        TAG_METRIC: metric_name,
        TAG_METRIC_VALUE: repr(float(metric_value)),
        TAG_DATA_FINGERPRINT: data_fingerprint,
        TAG_ROLE: verdict.alias,
    }
    if pipeline_run_id is not None:
        tags[TAG_PIPELINE_RUN] = pipeline_run_id
    if verdict.previous_version is not None:
        tags[TAG_PREVIOUS_CHAMPION] = str(verdict.previous_version)
    created = client.create_model_version(model_name, source, run_id=run_id, tags=tags, description=verdict.reason)
    new_version = int(created.version)
    _apply_verdict(client, model_name, new_version, verdict)
    return _decision(model_name, new_version, verdict, metric_name, metric_value)


def version_of_pipeline_run(client: MlflowClient, model_name: str, pipeline_run_id: str) -> ModelVersion | None:
    """The version `pipeline_run_id` registered under `model_name` (the first, should there be several)."""
    query = f"name = '{_quoted(model_name)}' and tags.`{TAG_PIPELINE_RUN}` = '{_quoted(pipeline_run_id)}'"
    found = client.search_model_versions(query)
    return min(found, key=lambda version: int(version.version)) if found else None


def _finish_earlier_registration(
    client: MlflowClient, registered: RegisteredModel, version: ModelVersion, higher_is_better: bool
) -> ChampionDecision:
    """The decision about a version an earlier attempt created; its alias is set now if that attempt
    was killed before setting it (decided, as then, from the version's own metric tags)."""
    number, tags = int(version.version), dict(version.tags or {})
    metric_name, metric_value = tags.get(TAG_METRIC, ""), _float_or_none(tags.get(TAG_METRIC_VALUE))
    if metric_value is None:
        raise ValueError(f"{registered.name} v{number} carries no {TAG_METRIC_VALUE} tag: it cannot be reused")
    aliases = {alias for alias, target in registered.aliases.items() if int(target) == number}
    previous = _int_or_none(tags.get(TAG_PREVIOUS_CHAMPION))
    if aliases & {CHAMPION, CHALLENGER}:
        alias = CHAMPION if CHAMPION in aliases else CHALLENGER
        decision: Literal["promoted", "kept_challenger"] = "promoted" if alias == CHAMPION else "kept_challenger"
        before = None if previous is None else client.get_model_version(registered.name, str(previous))
        previous_metric = None if before is None else _float_or_none(dict(before.tags or {}).get(TAG_METRIC_VALUE))
        verdict = Verdict(decision, alias, version.description or "", previous, previous_metric)
    else:
        champion = _champion(client, registered)
        fingerprint = tags.get(TAG_DATA_FINGERPRINT, "")
        verdict = compare_with_champion(champion, metric_name, metric_value, fingerprint, higher_is_better)
        client.update_model_version(registered.name, str(number), description=verdict.reason)
        client.set_model_version_tag(registered.name, str(number), TAG_ROLE, verdict.alias)
        if verdict.previous_version is not None:
            client.set_model_version_tag(
                registered.name, str(number), TAG_PREVIOUS_CHAMPION, str(verdict.previous_version)
            )
    _apply_verdict(client, registered.name, number, verdict)
    return _decision(registered.name, number, verdict, metric_name, metric_value)


def _champion(client: MlflowClient, registered: RegisteredModel) -> ModelVersion | None:
    champion_version = registered.aliases.get(CHAMPION)
    return None if champion_version is None else client.get_model_version(registered.name, str(champion_version))


def _apply_verdict(client: MlflowClient, model_name: str, version: int, verdict: Verdict) -> None:
    """Set the version's alias; a replaced champion is tagged as such (both idempotent)."""
    client.set_registered_model_alias(model_name, verdict.alias, str(version))
    if verdict.decision == "promoted" and verdict.previous_version is not None:
        client.set_model_version_tag(model_name, str(verdict.previous_version), TAG_ROLE, PREVIOUS_CHAMPION_ROLE)


def _decision(
    model_name: str, version: int, verdict: Verdict, metric_name: str, metric_value: float
) -> ChampionDecision:
    return ChampionDecision(
        model_name=model_name,
        version=version,
        alias=verdict.alias,
        decision=verdict.decision,
        reason=verdict.reason,
        previous_champion_version=verdict.previous_version,
        previous_metric=verdict.previous_metric,
        metric_name=metric_name,
        metric_value=metric_value,
    )


def compare_with_champion(
    champion: ModelVersion | None,
    metric_name: str,
    metric_value: float,
    data_fingerprint: str,
    higher_is_better: bool = True,
) -> Verdict:
    """Decide from the champion's tags whether a new version with `metric_value` replaces it."""
    if champion is None:
        return Verdict("promoted", CHAMPION, "no champion yet: the first version becomes the champion", None, None)
    version, tags = int(champion.version), dict(champion.tags or {})
    previous = _float_or_none(tags.get(TAG_METRIC_VALUE))
    if tags.get(TAG_METRIC) != metric_name or previous is None:
        reason = (
            f"champion v{version} carries no comparable {metric_name} (its metric tags: "
            f"{tags.get(TAG_METRIC)!r} = {tags.get(TAG_METRIC_VALUE)!r}): kept as challenger; promote manually"
        )
        return Verdict("kept_challenger", CHALLENGER, reason, version, previous)
    theirs = tags.get(TAG_DATA_FINGERPRINT)
    if theirs != data_fingerprint:
        reason = (
            f"champion v{version} was evaluated on different test data (fingerprint {_short(theirs)} vs "
            f"{_short(data_fingerprint)}): {metric_name} {previous:.4g} and {metric_value:.4g} are not comparable; "
            "promote manually or re-evaluate the champion on this data"
        )
        return Verdict("kept_challenger", CHALLENGER, reason, version, previous)
    better = metric_value > previous if higher_is_better else metric_value < previous
    direction = "higher" if higher_is_better else "lower"
    if better:
        reason = f"{metric_name} {metric_value:.4g} beats champion v{version}'s {previous:.4g} ({direction} is better)"
        return Verdict("promoted", CHAMPION, reason, version, previous)
    reason = (
        f"{metric_name} {metric_value:.4g} does not beat champion v{version}'s {previous:.4g} "
        f"({direction} is better, ties keep the champion)"
    )
    return Verdict("kept_challenger", CHALLENGER, reason, version, previous)


def _ensure_registered_model(client: MlflowClient, name: str) -> RegisteredModel:
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
    try:
        return client.create_registered_model(name)
    except MlflowException as exc:  # created by someone else in the meantime
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        return client.get_registered_model(name)


def _float_or_none(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _int_or_none(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _quoted(text: str) -> str:
    """A value inside a single-quoted MLflow search filter."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _short(fingerprint: str | None) -> str:
    return "(none)" if fingerprint is None else fingerprint[:12]
