"""The final ensemble (`final.ensemble`): members differ only by seed, the first is the single network of
`final.ensemble: 1`, the ensemble predicts its members' mean, and its checkpoint rebuilds every member."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from schemas.hyperparams import HyperParams
from stagetune.data.defaults import with_data_defaults
from stagetune.data.stage import load_stage_arrays, run_sample_stage
from stagetune.models import build_model
from stagetune.models.ensemble import MeanEnsemble, ensemble_of
from stagetune.registry import load_checkpoint, save_checkpoint
from stagetune.stages.final_members import (
    ensemble_size,
    member_seeds,
    search_row_epochs,
    size_rule,
    train_final_members,
)
from stagetune.task import full_task_for
from tests.conftest import tiny_config

CPU = torch.device("cpu")
HP = HyperParams(depth=1, width=16, batch_size=32, learning_rate=1e-2, dropout=0.2)


def _members(count: int, outputs: int) -> list[torch.nn.Module]:
    return [build_model("mlp", HP, [4], outputs, seed=seed).eval() for seed in range(count)]


def test_a_classifier_ensemble_predicts_its_members_mean_probabilities() -> None:
    members = _members(3, 5)
    x = torch.randn(7, 4)
    expected = torch.stack([m(x).softmax(dim=-1) for m in members]).mean(dim=0)
    out = MeanEnsemble(members, classifier=True)(x)
    # Its outputs read as logits: softmax gives the mean probabilities back, so evaluation and the served
    # model's `proba` need no special case.
    torch.testing.assert_close(out.softmax(dim=-1), expected)
    torch.testing.assert_close(out.exp().sum(dim=-1), torch.ones(7))
    assert torch.equal(out.argmax(dim=-1), expected.argmax(dim=-1))


def test_a_class_every_member_rules_out_keeps_a_finite_output() -> None:
    class Certain(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[200.0, -200.0]]).expand(len(x), 2)

    out = MeanEnsemble([Certain(), Certain()], classifier=True)(torch.zeros(3, 4))
    assert torch.isfinite(out).all()
    assert torch.isfinite(torch.nn.functional.cross_entropy(out, torch.ones(3, dtype=torch.long)))


def test_a_regressor_ensemble_predicts_its_members_mean() -> None:
    members = _members(4, 2)
    x = torch.randn(5, 4)
    torch.testing.assert_close(
        MeanEnsemble(members, classifier=False)(x), torch.stack([m(x) for m in members]).mean(dim=0)
    )


def test_one_member_is_the_network_itself_and_none_is_refused() -> None:
    (member,) = _members(1, 3)
    assert ensemble_of([member], classifier=True) is member
    with pytest.raises(ValueError, match="at least one member"):
        MeanEnsemble([], classifier=True)


def test_member_seeds_start_at_the_config_seed() -> None:
    assert member_seeds(7, 1) == [7]
    assert member_seeds(7, 3) == [7, 8, 9]


@pytest.mark.parametrize(
    ("requested", "share", "search", "member", "size"),
    [
        (5, 0.5, 1000.0, 50.0, 5),  # a cheap final network next to the search: every member fits
        (5, 0.5, 1000.0, 200.0, 3),  # 500 row-epochs pay for two more networks of 200
        (5, 0.5, 1000.0, 600.0, 1),  # one final network costs more than half the search: no second one
        (5, 0.0, 1000.0, 1.0, 1),  # no budget: one network
        (1, 10.0, 1000.0, 1.0, 1),  # one asked for
        (5, 0.5, 1000.0, 0.0, 1),  # a first network that trained no epoch is not multiplied
    ],
)
def test_the_ensemble_grows_only_within_its_share_of_the_search(
    requested: int, share: float, search: float, member: float, size: int
) -> None:
    assert ensemble_size(requested, share, search, member) == size


def test_the_search_s_compute_counts_every_trial_epoch_over_its_stage_s_rows_and_each_fold() -> None:
    def stage(rows: int, *epochs: int) -> SimpleNamespace:
        return SimpleNamespace(n_train_rows=rows, trials=[SimpleNamespace(epochs_run=e) for e in epochs])

    coarse, refine = stage(50, 3, 3, 1), stage(100, 10, 4)  # coarse on half the rows; a pruned trial's 1 epoch
    assert search_row_epochs([coarse, refine], folds=1) == 7 * 50 + 14 * 100
    assert search_row_epochs([coarse, refine], folds=5) == 5 * (7 * 50 + 14 * 100)


def test_the_size_rule_says_why_in_words() -> None:
    assert size_rule(1, 1, 0.5, 1000.0, 10.0) == "final.ensemble is 1: one network"
    assert "5 networks (final.ensemble)" in size_rule(5, 5, 0.5, 1000.0, 10.0)
    limited = size_rule(5, 3, 0.5, 1000.0, 200.0)
    assert limited.startswith("3 of up to 5 networks")
    assert "one network took 200 row-epochs; the search 1,000" in limited
    assert "final.ensemble_budget 0.5 pays for 2 more" in limited


@pytest.mark.parametrize("classifier", [True, False])
def test_an_ensemble_checkpoint_rebuilds_every_member(tmp_path: Path, classifier: bool) -> None:
    outputs = 3 if classifier else 2
    model = ensemble_of(_members(3, outputs), classifier)
    path = tmp_path / "checkpoint.pt"
    task_args = None if classifier else {"task": "regression", "target_mean": [0.0, 0.0], "target_std": [1.0, 1.0]}
    names = ["a", "b", "c"] if classifier else ["y1", "y2"]
    save_checkpoint(
        path, model, family="mlp", hp=HP, input_shape=[4], num_classes=outputs, class_names=names,
        import_path=None, data_fingerprint="f", metrics=None, task_args=task_args, ensemble_members=3,
    )  # fmt: skip
    loaded = load_checkpoint(path)
    assert isinstance(loaded.model, MeanEnsemble)
    assert len(loaded.model.members) == 3
    assert loaded.model.classifier is classifier
    x = torch.randn(6, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))


def test_a_single_network_checkpoint_loads_as_one_network(tmp_path: Path) -> None:
    (member,) = _members(1, 3)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(
        path, member, family="mlp", hp=HP, input_shape=[4], num_classes=3, class_names=["a", "b", "c"],
        import_path=None, data_fingerprint="f", metrics=None,
    )  # fmt: skip
    loaded = load_checkpoint(path)
    assert not isinstance(loaded.model, MeanEnsemble)
    x = torch.randn(6, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), member(x))


@pytest.mark.slow
@pytest.mark.parametrize("folds", [1, 3], ids=["validation split", "small data folds"])
def test_the_first_member_is_the_single_network_and_the_others_differ_by_seed(tmp_path: Path, folds: int) -> None:
    def members(count: int) -> list[tuple[int, list[float], dict[str, torch.Tensor]]]:
        config = tiny_config(
            tmp_path / str(count), f"final.ensemble={count}", f"search.cv_folds={folds}", "final.max_epochs=4"
        )
        sample = run_sample_stage(config, tmp_path / f"stage1-{count}")
        config = with_data_defaults(config, sample)
        arrays = load_stage_arrays(sample)
        task = full_task_for(sample, config.training.loss)
        # A search of 1e9 row-epochs: the budget pays for every member asked for.
        trained = train_final_members(config, sample, arrays, HP, task, CPU, 1e9, lambda index, record: None)
        assert trained.rule is None if folds == 1 else trained.rule.startswith("small data")
        return [
            (m.seed, [r.train_loss for r in m.fit.history], {k: v.clone() for k, v in m.model.state_dict().items()})
            for m in trained.members
        ]

    (single,) = members(1)
    three = members(3)
    assert [seed for seed, _, _ in three] == [single[0], single[0] + 1, single[0] + 2]
    first = three[0]
    assert first[1] == single[1]  # the same curve, epoch by epoch
    assert all(torch.equal(first[2][k], single[2][k]) for k in single[2])
    weights = [np.concatenate([v.numpy().ravel() for v in state.values()]) for _, _, state in three]
    assert not np.allclose(weights[0], weights[1])
    assert not np.allclose(weights[1], weights[2])
