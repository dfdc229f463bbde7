"""examples/custom_model end to end: a user's model tuned over its own hyperparameters (tiny budgets)."""

import json
from collections import defaultdict
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from torch import nn

from examples.custom_model.model import ResidualBlock
from flows.tune_pipeline import tune_pipeline
from stagetune.models.ensemble import MeanEnsemble
from stagetune.registry.checkpoint import load_checkpoint
from stagetune.search.space import hyperparams_from_params
from tests.conftest import tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples/custom_model/config.yaml"
OWN = ("params.blocks", "params.hidden_size", "params.norm")


def _value(text: str) -> object:
    """An MLflow param as the value it was logged from (numbers and booleans as JSON, strings as they are)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def test_the_models_own_hyperparameters_are_tuned_end_to_end(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "coarse.n_trials=6", "final.max_epochs=2", config_file=EXAMPLE)
    result = tune_pipeline(config)
    assert result.status == "completed", result.message
    assert result.coarse is not None
    assert result.narrowing is not None
    assert result.best_hyperparams is not None
    assert result.final is not None

    client = MlflowClient(result.tracking_uri)
    runs = client.search_runs([result.mlflow_experiment_id], max_results=1000)
    coarse_trials = [
        r for r in runs if r.data.tags.get("stagetune.stage") == "coarse" and "stagetune.trial" in r.data.tags
    ]
    assert len(coarse_trials) == 6
    seen: dict[str, set[str]] = defaultdict(set)
    for run in coarse_trials:
        for name in OWN:
            seen[name].add(run.data.params[name])
        assert "width" not in run.data.params  # custom reads no width: neither sampled nor logged
    assert all(len(seen[name]) >= 2 for name in OWN), dict(seen)

    # A trial rebuilt from its MLflow params alone (its Optuna params) is the trial that ran.
    records = {str(r.number): r for r in result.coarse.trials}
    for run in coarse_trials:
        logged = {k.removeprefix("optuna."): _value(v) for k, v in run.data.params.items() if k.startswith("optuna.")}
        rebuilt = hyperparams_from_params(logged, result.coarse.space, config.model)
        assert rebuilt == records[run.data.tags["stagetune.trial"]].hyperparams

    assert set(OWN) <= {change.name for change in result.narrowing.changes}
    best = result.best_hyperparams
    assert set(best.params) == {"blocks", "hidden_size", "norm"}
    parent = client.get_run(result.mlflow_parent_run_id)
    logged_best = {name: _value(parent.data.params[f"best.{name}"]) for name in OWN}
    assert logged_best == {f"params.{k}": v for k, v in best.params.items()}
    # The final model was built with them: its checkpoint rebuilds (strict state dict) into that shape.
    local = client.download_artifacts(result.final.mlflow_run_id or "", result.final.checkpoint_artifact, str(tmp_path))
    loaded = load_checkpoint(Path(local))
    assert loaded.hyperparams == best
    # Each network of the final ensemble (final.ensemble) is the user's model with those hyperparameters.
    networks = list(loaded.model.members) if isinstance(loaded.model, MeanEnsemble) else [loaded.model]
    assert len(networks) == len(result.final.members)
    for network in networks:
        blocks = [m for m in network.modules() if isinstance(m, ResidualBlock)]
        assert len(blocks) == best.params["blocks"]
        stem = next(m for m in network.modules() if isinstance(m, nn.Linear))
        assert stem.out_features == best.params["hidden_size"]
        norms = {type(m) for m in network.modules() if isinstance(m, nn.LayerNorm | nn.BatchNorm1d)}
        assert norms == {"layer": {nn.LayerNorm}, "batch": {nn.BatchNorm1d}, "none": set()}[str(best.params["norm"])]
