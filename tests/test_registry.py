"""Checkpoints (round trip, weights-only refusal) and champion promotion against a real local MLflow store."""

import itertools
import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from schemas.final import ChampionDecision, ClassReport, TestMetrics
from schemas.hyperparams import HyperParams
from stagetune.models import build_model
from stagetune.registry import (
    TAG_DATA_FINGERPRINT,
    TAG_METRIC_VALUE,
    TAG_ROLE,
    CheckpointError,
    load_checkpoint,
    register_and_promote,
    save_checkpoint,
)

HP = HyperParams(width=16, depth=2, dropout=0.3, batch_norm=True)
SHAPE, CLASSES = [6], ["a", "b", "c"]
_names = itertools.count()


def _metrics() -> TestMetrics:
    rows = [ClassReport(name=n, precision=1.0, recall=1.0, f1=1.0, support=1) for n in CLASSES]
    matrix = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    return TestMetrics(
        loss=float("nan"), accuracy=1.0, balanced_accuracy=1.0, macro_f1=1.0,
        per_class=rows, confusion_matrix=matrix, class_names=CLASSES, n_samples=3,
    )  # fmt: skip


def _trained_model() -> torch.nn.Module:
    model = build_model("mlp", HP, SHAPE, len(CLASSES), seed=1)
    model.train()
    model(torch.randn(32, 6, generator=torch.Generator().manual_seed(0)))  # move BatchNorm's running stats
    return model


def _save(path: Path, model: torch.nn.Module, fingerprint: str = "fp-1") -> None:
    save_checkpoint(
        path, model, family="mlp", hp=HP, input_shape=SHAPE, num_classes=len(CLASSES), class_names=CLASSES,
        import_path=None, data_fingerprint=fingerprint, metrics=_metrics(),
    )  # fmt: skip


def test_checkpoint_round_trip_rebuilds_the_model_with_identical_predictions(tmp_path: Path) -> None:
    model = _trained_model()
    path = tmp_path / "ckpt" / "model.pt"
    _save(path, model)
    _save(path, model)  # overwriting in place works too
    loaded = load_checkpoint(path)
    inputs = torch.randn(20, 6, generator=torch.Generator().manual_seed(2))
    model.eval()
    assert not loaded.model.training
    assert torch.equal(loaded.model(inputs), model(inputs))
    assert (loaded.family, loaded.hyperparams, loaded.class_names, loaded.data_fingerprint) == (
        "mlp",
        HP,
        CLASSES,
        "fp-1",
    )
    assert loaded.metrics is not None
    assert np.isnan(loaded.metrics.loss)
    assert loaded.stagetune_version not in ("", "unknown")
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temporary file left behind


class _Payload:
    """Unpickling this runs os.makedirs(marker): what a tampered checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.makedirs, (str(self.marker),)


def test_a_checkpoint_holding_a_pickled_object_is_refused_without_running_it(tmp_path: Path) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "tampered.pt"
    _save(path, _trained_model())
    payload = torch.load(path, weights_only=True)
    payload["model_args"]["family"] = _Payload(marker)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the control: a plain load does run the payload
    assert marker.exists()


def test_a_foreign_file_is_not_taken_for_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a stagetune checkpoint"):
        load_checkpoint(path)


def make_store(root: Path) -> tuple[str, str, Path]:
    """A SQLite tracking/registry store under `root` with a local artifact root; also a checkpoint file."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    experiment_id = MlflowClient(uri).create_experiment("t", artifact_location=(root / "artifacts").as_uri())
    checkpoint = root / "final.pt"
    _save(checkpoint, _trained_model())
    return uri, experiment_id, checkpoint


def logged_source(client: MlflowClient, run_id: str, checkpoint: Path) -> str:
    """The checkpoint logged under `model/` of `run_id`: a version source without a pyfunc around it."""
    client.log_artifact(run_id, str(checkpoint), artifact_path="model")
    return f"{client.get_run(run_id).info.artifact_uri}/model"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """One store per module (see `make_store`)."""
    return make_store(tmp_path_factory.mktemp("registry"))


def _register(
    store: tuple[str, str, Path], name: str, value: float, fingerprint: str = "fp-1", higher: bool = True
) -> ChampionDecision:
    uri, experiment_id, checkpoint = store
    return register_at(uri, experiment_id, checkpoint, name, value, fingerprint, higher)


def register_at(
    uri: str,
    experiment_id: str,
    checkpoint: Path,
    name: str,
    value: float,
    fingerprint: str = "fp-1",
    higher: bool = True,
) -> ChampionDecision:
    """One final stage's registration: a new run, the checkpoint logged as its model, then the decision."""
    client = MlflowClient(uri)
    run_id = client.create_run(experiment_id).info.run_id
    return register_and_promote(
        client, run_id=run_id, model_name=name, model_source=logged_source(client, run_id, checkpoint),
        metric_name="test/acc", metric_value=value, data_fingerprint=fingerprint, higher_is_better=higher,
    )  # fmt: skip


def _champion(store: tuple[str, str, Path], name: str) -> int:
    return int(MlflowClient(store[0]).get_model_version_by_alias(name, "champion").version)


def test_first_version_becomes_champion_and_its_artifacts_load(store: tuple[str, str, Path], tmp_path: Path) -> None:
    name = f"m{next(_names)}"
    with pytest.raises(MlflowException):  # the registered model does not exist yet
        MlflowClient(store[0]).get_model_version_by_alias(name, "champion")
    decision = _register(store, name, 0.90)
    assert (decision.version, decision.alias, decision.decision) == (1, "champion", "promoted")
    assert decision.previous_champion_version is None
    assert "first version" in decision.reason
    assert _champion(store, name) == 1
    client = MlflowClient(store[0])
    version = client.get_model_version(name, "1")
    assert version.tags[TAG_METRIC_VALUE] == "0.9"
    assert version.tags[TAG_DATA_FINGERPRINT] == "fp-1"
    with pytest.raises(MlflowException, match="alias challenger not found"):
        client.get_model_version_by_alias(name, "challenger")
    # Not "models:/name@champion": in MLflow 3.17.2 that resolves against the global registry URI.
    source = client.get_model_version_download_uri(name, "1")
    assert source == f"{client.get_run(str(version.run_id)).info.artifact_uri}/model"  # the run's artifact folder
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp_path)))
    assert sorted(p.name for p in folder.iterdir()) == ["final.pt"]
    inputs = torch.randn(5, 6)
    assert torch.equal(load_checkpoint(folder / "final.pt").model(inputs), load_checkpoint(store[2]).model(inputs))


def test_a_better_version_on_the_same_data_takes_the_champion_alias(store: tuple[str, str, Path]) -> None:
    name = f"m{next(_names)}"
    _register(store, name, 0.90)
    decision = _register(store, name, 0.93)
    assert (decision.version, decision.alias, decision.decision) == (2, "champion", "promoted")
    assert (decision.previous_champion_version, decision.previous_metric) == (1, 0.90)
    assert "0.93" in decision.reason
    assert "0.9" in decision.reason
    assert _champion(store, name) == 2
    assert MlflowClient(store[0]).get_model_version(name, "1").tags[TAG_ROLE] == "previous_champion"


def test_a_worse_or_equal_version_is_a_challenger_and_the_champion_stays(store: tuple[str, str, Path]) -> None:
    name = f"m{next(_names)}"
    _register(store, name, 0.90)
    worse = _register(store, name, 0.85)
    assert (worse.version, worse.alias, worse.decision) == (2, "challenger", "kept_challenger")
    assert "0.85 does not beat champion v1's 0.9" in worse.reason
    assert _champion(store, name) == 1
    client = MlflowClient(store[0])
    assert int(client.get_model_version_by_alias(name, "challenger").version) == 2
    assert client.get_model_version(name, "2").tags[TAG_ROLE] == "challenger"
    assert _register(store, name, 0.90).decision == "kept_challenger"  # a tie keeps the champion
    assert _champion(store, name) == 1


def test_lower_is_better_metrics_promote_the_lower_value(store: tuple[str, str, Path]) -> None:
    name = f"m{next(_names)}"
    _register(store, name, 0.40, higher=False)
    assert _register(store, name, 0.50, higher=False).decision == "kept_challenger"
    assert _register(store, name, 0.30, higher=False).decision == "promoted"
    assert _champion(store, name) == 3


def test_a_champion_scored_on_other_test_data_is_not_compared(store: tuple[str, str, Path]) -> None:
    name = f"m{next(_names)}"
    _register(store, name, 0.90, fingerprint="aaaa1111")
    decision = _register(store, name, 0.99, fingerprint="bbbb2222")
    assert (decision.alias, decision.decision, decision.previous_champion_version) == (
        "challenger",
        "kept_challenger",
        1,
    )
    assert "different test data" in decision.reason
    assert "aaaa1111" in decision.reason
    assert "bbbb2222" in decision.reason
    assert "promote manually or re-evaluate" in decision.reason
    assert _champion(store, name) == 1


def test_a_non_finite_metric_registers_nothing(store: tuple[str, str, Path]) -> None:
    name = f"m{next(_names)}"
    with pytest.raises(ValueError, match="finite"):
        _register(store, name, float("nan"))
    with pytest.raises(MlflowException, match="not found"):
        MlflowClient(store[0]).get_registered_model(name)
