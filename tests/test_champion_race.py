"""Two retunes of one model registering at the same moment, in two real processes against one store."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from stagetune.registry import TAG_ROLE
from stagetune.registry.champion import TAG_PREVIOUS_CHAMPION, rightful_champion
from tests.conftest import subprocess_env
from tests.test_registry import logged_source, make_store, register_at

# Each child registers one version, in the worst order for a read-compare-set without a lock: the
# "stale" child reads the registry before the other child's version exists (so it decides that its
# own, worse, version is the champion), and its alias write lands last, after the other child wrote.
# Both first alias writes wait (up to 10 s) until both children have reached theirs.
CHILD = """
import json, sys, time
from pathlib import Path
from mlflow.tracking import MlflowClient
from tests.test_registry import register_at
uri, experiment_id, checkpoint, value, barrier, role = sys.argv[1:7]
set_alias, search, create = (
    MlflowClient.set_registered_model_alias, MlflowClient.search_model_versions, MlflowClient.create_model_version
)
writes = []

def wait_for(path, count=1):
    deadline = time.monotonic() + 10
    while len(list(Path(path).glob("*"))) < count and time.monotonic() < deadline:
        time.sleep(0.05)

def delayed_alias(self, name, alias, version):
    if not writes:
        Path(barrier, "alias", role).touch()
        wait_for(Path(barrier, "alias"), 2)
        if role == "stale":
            time.sleep(1.5)
    writes.append([alias, int(version)])
    return set_alias(self, name, alias, version)

def marked_search(self, *args, **kwargs):
    found = search(self, *args, **kwargs)
    Path(barrier, "read", role).touch()
    return found

def delayed_create(self, *args, **kwargs):
    if role == "fresh":
        wait_for(Path(barrier, "read"))  # the stale child has read the registry already
    return create(self, *args, **kwargs)

MlflowClient.set_registered_model_alias = delayed_alias
MlflowClient.search_model_versions = marked_search
MlflowClient.create_model_version = delayed_create
decision = register_at(uri, experiment_id, Path(checkpoint), "raced", float(value))
print(json.dumps({"alias": decision.alias, "version": decision.version, "writes": writes}))
"""


@pytest.mark.integration
@pytest.mark.slow
def test_two_registrations_at_once_leave_one_champion_and_one_challenger(tmp_path: Path) -> None:
    uri, experiment_id, checkpoint = make_store(tmp_path)
    register_at(uri, experiment_id, checkpoint, "raced", 0.90)  # v1, the champion both retunes compare with
    barrier = tmp_path / "barrier"
    for folder in ("alias", "read"):
        (barrier / folder).mkdir(parents=True)
    env = subprocess_env(tmp_path)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, uri, experiment_id, str(checkpoint), value, str(barrier), role],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for value, role in (("0.91", "stale"), ("0.93", "fresh"))
    ]
    outputs = [child.communicate(timeout=240) for child in children]
    assert all(child.returncode == 0 for child in children), [err[-2000:] for _, err in outputs]
    stale, fresh = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)
    client = MlflowClient(uri)
    versions = {int(v.version): v for v in client.search_model_versions("name = 'raced'")}
    assert sorted(versions) == [1, 2, 3]
    best = next(n for n, v in versions.items() if v.tags["stagetune.metric_value"] == "0.93")
    worse = next(n for n, v in versions.items() if v.tags["stagetune.metric_value"] == "0.91")
    assert int(client.get_model_version_by_alias("raced", "champion").version) == best
    assert int(client.get_model_version_by_alias("raced", "challenger").version) == worse
    assert (versions[best].tags[TAG_ROLE], versions[worse].tags[TAG_ROLE]) == ("champion", "challenger")
    assert versions[1].tags[TAG_ROLE] == "previous_champion"
    assert versions[best].tags[TAG_PREVIOUS_CHAMPION] == "1"
    assert (stale["alias"], fresh["alias"]) == ("challenger", "champion")
    # The race did happen: the stale child first moved the alias to its own worse version, after the
    # fresh child had written, and then moved it back itself.
    assert stale["writes"][:2] == [["champion", worse], ["champion", best]]
    assert fresh["writes"][0] == ["champion", best]


def test_the_rightful_champion_is_a_function_of_the_tags_and_the_alias(tmp_path: Path) -> None:
    uri, experiment_id, checkpoint = make_store(tmp_path)
    client = MlflowClient(uri)
    for value, fingerprint in ((0.90, "fp-1"), (0.95, "fp-2"), (0.93, "fp-1"), (0.93, "fp-1")):
        run_id = client.create_run(experiment_id).info.run_id
        tags = {
            "stagetune.metric": "acc",
            "stagetune.metric_value": repr(value),
            "stagetune.data_fingerprint": fingerprint,
        }
        if not client.search_registered_models("name = 'pure'"):
            client.create_registered_model("pure")
        client.create_model_version("pure", logged_source(client, run_id, checkpoint), run_id=run_id, tags=tags)
    versions = client.search_model_versions("name = 'pure'")
    assert rightful_champion(versions, None) == 3  # v1 stands in; v3 beats it on fp-1 (v4 ties v3: lower wins)
    assert rightful_champion(versions, 1) == 3
    assert rightful_champion(versions, 3) == 3  # stable: nothing beats v3 on its data; v2 is on other data
    assert rightful_champion(versions, 1, higher_is_better=False) == 1
    client.set_model_version_tag("pure", "1", "stagetune.rescore.fp-2", "acc=0.94")  # v1 re-scored on fp-2
    assert rightful_champion(versions, 1) == 3  # the tags as read before the re-score
    versions = client.search_model_versions("name = 'pure'")
    assert rightful_champion(versions, 1) == 2  # now v2's 0.95 beats v1's 0.94 on fp-2, and is the best
