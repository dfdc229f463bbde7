"""One model version per pipeline run: an attempt killed during registration, then resumed, against a real store."""

import itertools
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from schemas.final import ChampionDecision
from stagetune.registry import TAG_ROLE, register_and_promote
from stagetune.registry.champion import TAG_PIPELINE_RUN, TAG_VERSION_RUN, version_of_pipeline_run
from tests.test_registry import logged_source, make_store

_names = itertools.count()


class Killed(BaseException):
    """Stands for the process dying at the patched call (a BaseException, as a signal's would be)."""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    return make_store(tmp_path_factory.mktemp("registry-resume"))


def _attempt(
    client: MlflowClient, store: tuple[str, str, Path], name: str, pipeline: str, value: float
) -> ChampionDecision:
    """One attempt's final stage: a new final run (as a resumed attempt opens), then registration."""
    _, experiment_id, checkpoint = store
    run_id = client.create_run(experiment_id).info.run_id
    return register_and_promote(
        client, run_id=run_id, model_name=name, model_source=logged_source(client, run_id, checkpoint),
        metric_name="test/acc", metric_value=value, data_fingerprint="fp-1", pipeline_run_id=pipeline,
    )  # fmt: skip


def _versions(store: tuple[str, str, Path], name: str) -> list[int]:
    return sorted(int(v.version) for v in MlflowClient(store[0]).search_model_versions(f"name = '{name}'"))


def test_a_rerun_after_registration_reuses_the_version(store: tuple[str, str, Path]) -> None:
    name, client = f"r{next(_names)}", MlflowClient(store[0])
    first = _attempt(client, store, name, "pipeline-a", 0.90)
    again = _attempt(client, store, name, "pipeline-a", 0.90)  # killed before its result was saved: rerun
    assert _versions(store, name) == [1]
    assert again == first
    # The rerun's final run points at the run that holds the version's checkpoint (the killed attempt's).
    source_run = client.get_model_version(name, "1").run_id
    reruns = client.search_runs([store[1]], filter_string=f"tags.`{TAG_VERSION_RUN}` = '{source_run}'")
    assert len(reruns) == 1
    assert reruns[0].info.run_id != source_run
    other = _attempt(client, store, name, "pipeline-b", 0.95)  # another pipeline run registers its own
    assert (other.version, other.alias, other.previous_champion_version) == (2, "champion", 1)
    assert _versions(store, name) == [1, 2]
    found = version_of_pipeline_run(client, name, "pipeline-b")
    assert found is not None
    assert found.tags[TAG_PIPELINE_RUN] == "pipeline-b"


@pytest.mark.parametrize("killed_at", ["set_registered_model_alias", "set_model_version_tag"])
def test_a_kill_between_creating_the_version_and_its_alias_is_finished_by_the_rerun(
    store: tuple[str, str, Path], monkeypatch: pytest.MonkeyPatch, killed_at: str
) -> None:
    name, client = f"r{next(_names)}", MlflowClient(store[0])
    _attempt(client, store, name, "pipeline-a", 0.90)  # v1: champion
    with monkeypatch.context() as patch:
        # The attempt dies right after `create_model_version`: v2 exists, with no alias yet (or the
        # old champion not yet tagged as replaced).
        patch.setattr(MlflowClient, killed_at, lambda *args, **kwargs: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            _attempt(client, store, name, "pipeline-b", 0.95)
    assert _versions(store, name) == [1, 2]
    resumed = _attempt(client, store, name, "pipeline-b", 0.95)
    assert _versions(store, name) == [1, 2]  # no v3
    assert (resumed.version, resumed.alias, resumed.decision) == (2, "champion", "promoted")
    assert (resumed.previous_champion_version, resumed.previous_metric) == (1, 0.90)
    assert int(client.get_model_version_by_alias(name, "champion").version) == 2
    assert client.get_model_version(name, "1").tags[TAG_ROLE] == "previous_champion"
