"""Register the final model as a model version and decide whether it replaces the registered model's champion.

One pipeline run registers one version, whatever attempt gets there: the version is tagged with the
pipeline's MLflow parent run id, and a resumed run (killed after the version was created) finds it,
finishes its alias decision if that was interrupted, and registers nothing new.

The rule: a new version becomes `champion` only if there is none yet, or if it beats the champion
strictly on the same metric measured on the same test data (same data fingerprint, or the champion's
re-score on that data, see `rescore`). Otherwise it is registered as `challenger` with the reason, and
the champion stays: numbers from different test sets are not comparable, and a person decides.

Two pipelines may register versions of one model at the same moment. MLflow's registry offers no
lock or compare-and-set, and a lock outside it (a file, a database row) is only shared by processes
that share that file or database. Instead the decision is a fixed point that every registering process
drives the registry to: `rightful_champion` is a deterministic function of the versions' tags and the
current alias (the best version that beats the champion on comparable data, ties keep the champion,
then the lower version). Each process creates its version (tags included) first, then repeats "read
all versions and the alias; if the alias is not the rightful champion, move it" until a read finds it
in place, and only then tags its own role; if the alias moved while it tagged, it goes round again.
Versions only ever get added, so whichever process writes last has read every version created before
its read; a stale write by a slower process is undone by that process's own next read. Two retunes
finishing together end with exactly one champion (the better) and the other a challenger.
Consequence: the champion is always the best version on the champion's test data; a worse version
set by hand stays champion only until the next registration on that data.
"""

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from schemas.final import ChampionDecision

CHAMPION: Literal["champion"] = "champion"
CHALLENGER: Literal["challenger"] = "challenger"
TAG_METRIC = "stagetune.metric"
TAG_METRIC_VALUE = "stagetune.metric_value"
TAG_DATA_FINGERPRINT = "stagetune.data_fingerprint"
TAG_ROLE = "stagetune.role"
TAG_PIPELINE_RUN = "stagetune.pipeline_run"
TAG_PREVIOUS_CHAMPION = "stagetune.previous_champion"
TAG_VERSION_RUN = "stagetune.model_version_run"  # on a resumed final run: the run its reused version came from
TAG_RESCORE_PREFIX = "stagetune.rescore."  # + test fingerprint[:16]: "metric=value" of a champion re-scored there
PREVIOUS_CHAMPION_ROLE = "previous_champion"
_SETTLE_ROUNDS = 20


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
    model_source: str,
    metric_name: str,
    metric_value: float,
    data_fingerprint: str,
    higher_is_better: bool = True,
    pipeline_run_id: str | None = None,
    model_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
) -> ChampionDecision:
    """Register `model_source` (a `models:/<model_id>` URI or an artifact folder) as a new version and set its alias.

    The version gets tags `stagetune.metric`, `stagetune.metric_value`, `stagetune.data_fingerprint`,
    `stagetune.role`, `stagetune.pipeline_run` and `extra_tags`, the reason as its description, and
    alias `champion` or `challenger` (see the module docstring for the rule and for concurrent
    registrations). A replaced champion is tagged `stagetune.role=previous_champion`. If
    `pipeline_run_id` already registered a version (an earlier attempt killed after registering), that
    version is the answer: no second one is created.
    """
    if not math.isfinite(metric_value):
        raise ValueError(f"{metric_name} is {metric_value}: a model without a finite test metric is not registered")
    _ensure_registered_model(client, model_name)
    earlier = None if pipeline_run_id is None else version_of_pipeline_run(client, model_name, pipeline_run_id)
    if earlier is not None:
        # This run's model comes from the same seeded training; the version keeps the one it was made from.
        client.set_tag(run_id, TAG_VERSION_RUN, str(earlier.run_id))
        return settle_alias(client, model_name, int(earlier.version), higher_is_better)
    tags = {
        **(extra_tags or {}),
        TAG_METRIC: metric_name,
        TAG_METRIC_VALUE: repr(float(metric_value)),
        TAG_DATA_FINGERPRINT: data_fingerprint,
        TAG_ROLE: "pending",
    }
    if pipeline_run_id is not None:
        tags[TAG_PIPELINE_RUN] = pipeline_run_id
    created = client.create_model_version(model_name, model_source, run_id=run_id, tags=tags, model_id=model_id)
    if model_id is not None:
        _link_logged_model(client, model_id, model_name, int(created.version))
    return settle_alias(client, model_name, int(created.version), higher_is_better)


def _link_logged_model(client: MlflowClient, model_id: str, model_name: str, version: int) -> None:
    """List the version on its logged model (tag `mlflow.modelVersions`, as `mlflow.register_model` does):
    MLflow's UI shows it on the model's page."""
    logged = client.get_logged_model(model_id)
    linked = json.loads(logged.tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
    entry = {"name": model_name, "version": version}
    if entry not in linked:
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps([*linked, entry])})


def version_of_pipeline_run(client: MlflowClient, model_name: str, pipeline_run_id: str) -> ModelVersion | None:
    """The version `pipeline_run_id` registered under `model_name` (the first, should there be several)."""
    query = f"name = '{_quoted(model_name)}' and tags.`{TAG_PIPELINE_RUN}` = '{_quoted(pipeline_run_id)}'"
    found = client.search_model_versions(query)
    return min(found, key=lambda version: int(version.version)) if found else None


def settle_alias(client: MlflowClient, model_name: str, number: int, higher_is_better: bool) -> ChampionDecision:
    """Drive the champion alias to its rightful version, then record version `number`'s role and reason.

    Idempotent: a resumed attempt calls it again for the version it created before a kill.
    """
    first_champion: ModelVersion | None = None
    for round_ in range(_SETTLE_ROUNDS):
        versions, registered = _read_state(client, model_name)
        by_number = {int(v.version): v for v in versions}
        current = _alias_target(registered, CHAMPION)
        if round_ == 0:  # the champion this version is compared with (on a rerun: the one it replaced)
            replaced = _previous(by_number[number])
            first_champion = by_number.get(replaced if current == number else current)  # type: ignore[arg-type]
        rightful = rightful_champion(versions, current, higher_is_better)
        if rightful is not None and rightful != current:
            if rightful == number and current is not None and _previous(by_number[number]) != current:
                # Before the alias moves, so that a rerun after a kill still knows what this version replaced.
                client.set_model_version_tag(model_name, str(number), TAG_PREVIOUS_CHAMPION, str(current))
            client.set_registered_model_alias(model_name, CHAMPION, str(rightful))
            continue
        mine = by_number[number]
        verdict = _verdict(mine, first_champion, by_number.get(rightful) if rightful else None, higher_is_better)
        _record_role(client, model_name, mine, verdict)
        if _alias_target(client.get_registered_model(model_name), CHAMPION) == rightful:
            metric_name, value = dict(mine.tags or {}).get(TAG_METRIC, ""), _metric_of(mine)
            return _decision(model_name, number, verdict, metric_name, value if value is not None else math.nan)
    raise RuntimeError(f"{model_name}: the champion alias kept moving for {_SETTLE_ROUNDS} rounds; rerun to settle it")


def rightful_champion(
    versions: Sequence[ModelVersion], current: int | None, higher_is_better: bool = True
) -> int | None:
    """The version the champion alias should point at, from the versions' tags and the alias alone.

    With no champion, the lowest-numbered version with a metric stands in for one. A version replaces
    the champion if it beats the champion's value on the version's own test data (the champion's own
    value, or its re-score there); of several, the best value wins, ties to the lower version.
    """
    scored = {int(v.version): v for v in versions if _metric_of(v) is not None}
    if current is None or current not in {int(v.version) for v in versions}:
        if not scored:
            return None
        current = min(scored)
    champion = next(v for v in versions if int(v.version) == current)
    champion_metric = dict(champion.tags or {}).get(TAG_METRIC)
    beaters: list[tuple[float, int]] = []
    for number, version in scored.items():
        tags = dict(version.tags or {})
        if number == current or tags.get(TAG_METRIC) != champion_metric:
            continue
        reference = champion_value_on(champion, tags.get(TAG_DATA_FINGERPRINT, ""))
        value = _metric_of(version)
        assert value is not None
        if reference is not None and (value > reference if higher_is_better else value < reference):
            beaters.append((value if higher_is_better else -value, -number))
    return -max(beaters)[1] if beaters else current


def champion_value_on(champion: ModelVersion, fingerprint: str) -> float | None:
    """The champion's metric on the test data `fingerprint`: its own, or a re-score recorded there."""
    tags = dict(champion.tags or {})
    if tags.get(TAG_DATA_FINGERPRINT) == fingerprint:
        return _metric_of(champion)
    recorded = tags.get(rescore_tag(fingerprint), "")
    name, _, value = recorded.rpartition("=")
    return _float_or_none(value) if recorded and name == tags.get(TAG_METRIC) else None


def rescore_tag(fingerprint: str) -> str:
    """The version tag holding a champion's metric re-scored on the test data `fingerprint`."""
    return f"{TAG_RESCORE_PREFIX}{fingerprint[:16]}"


def _verdict(
    mine: ModelVersion, before: ModelVersion | None, rightful: ModelVersion | None, higher_is_better: bool
) -> Verdict:
    """Why `mine` ended up where it did, told against the champion it was first compared with."""
    tags = dict(mine.tags or {})
    metric_name, value = tags.get(TAG_METRIC, ""), _metric_of(mine) or math.nan
    compared = compare_with_champion(before, metric_name, value, tags.get(TAG_DATA_FINGERPRINT, ""), higher_is_better)
    mine_wins = rightful is not None and int(rightful.version) == int(mine.version)
    if mine_wins == (compared.alias == CHAMPION):
        return compared
    assert rightful is not None
    other = _metric_of(rightful)
    if mine_wins:  # a concurrent version had taken the alias; this one beats it
        reason = f"{compared.reason}; it also beats v{rightful.version}, registered at the same time"
        return Verdict("promoted", CHAMPION, reason, compared.previous_version, compared.previous_metric)
    reason = (
        f"v{rightful.version}, registered at the same time, is champion with {metric_name} {other:.4g}, "
        f"which this version's {value:.4g} does not beat"
    )
    return Verdict("kept_challenger", CHALLENGER, reason, int(rightful.version), other)


def _record_role(client: MlflowClient, model_name: str, mine: ModelVersion, verdict: Verdict) -> None:
    """Tag and describe version `mine` by `verdict`; on promotion tag the replaced champion (all idempotent)."""
    number = str(mine.version)
    tags = dict(mine.tags or {})
    if tags.get(TAG_ROLE) != verdict.alias and tags.get(TAG_ROLE) != PREVIOUS_CHAMPION_ROLE:
        client.set_model_version_tag(model_name, number, TAG_ROLE, verdict.alias)
    if (mine.description or "") != verdict.reason:
        client.update_model_version(model_name, number, description=verdict.reason)
    if verdict.previous_version is not None and tags.get(TAG_PREVIOUS_CHAMPION) != str(verdict.previous_version):
        client.set_model_version_tag(model_name, number, TAG_PREVIOUS_CHAMPION, str(verdict.previous_version))
    if verdict.alias == CHALLENGER:
        client.set_registered_model_alias(model_name, CHALLENGER, number)
    elif verdict.previous_version is not None:
        client.set_model_version_tag(model_name, str(verdict.previous_version), TAG_ROLE, PREVIOUS_CHAMPION_ROLE)


def _read_state(client: MlflowClient, model_name: str) -> tuple[list[ModelVersion], RegisteredModel]:
    versions = list(client.search_model_versions(f"name = '{_quoted(model_name)}'", max_results=10_000))
    return versions, client.get_registered_model(model_name)


def _alias_target(registered: RegisteredModel, alias: str) -> int | None:
    target = (registered.aliases or {}).get(alias)
    return None if target is None else int(target)


def _previous(version: ModelVersion) -> int | None:
    return _int_or_none(dict(version.tags or {}).get(TAG_PREVIOUS_CHAMPION))


def _metric_of(version: ModelVersion) -> float | None:
    return _float_or_none(dict(version.tags or {}).get(TAG_METRIC_VALUE))


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
    rescored = "" if theirs == data_fingerprint else " (re-scored on this test data)"
    if theirs != data_fingerprint:
        previous_here = champion_value_on(champion, data_fingerprint)
        if previous_here is None:
            reason = (
                f"champion v{version} was evaluated on different test data (fingerprint {_short(theirs)} vs "
                f"{_short(data_fingerprint)}): {metric_name} {previous:.4g} and {metric_value:.4g} are not "
                "comparable; promote manually or re-evaluate the champion on this data"
            )
            return Verdict("kept_challenger", CHALLENGER, reason, version, previous)
        previous = previous_here
    better = metric_value > previous if higher_is_better else metric_value < previous
    direction = "higher" if higher_is_better else "lower"
    if better:
        reason = (
            f"{metric_name} {metric_value:.4g} beats champion v{version}'s {previous:.4g}{rescored} "
            f"({direction} is better)"
        )
        return Verdict("promoted", CHAMPION, reason, version, previous)
    reason = (
        f"{metric_name} {metric_value:.4g} does not beat champion v{version}'s {previous:.4g}{rescored} "
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
