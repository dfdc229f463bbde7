"""The benchmark suite's statistics (known inputs, known answers) and its data sets (each loads offline, with the
shape and labels it is described with). No training: the whole module runs in a few seconds."""

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench.references import LINEAR
from bench.search_efficiency import merge, parse_args, seeds_of, stagetune_budgets
from bench.search_report import suite_summary, summarise, table, verdicts
from bench.suite_before_after import main as before_after
from bench.suite_data import QUICK_SUITE, SUITE, suite_spec, write_csv
from bench.suite_stats import (
    Pair,
    bootstrap_mean,
    collapsed,
    comparison,
    mean_ranks,
    paired,
    ranks,
    wins_ties_losses,
)


def _row(method: str, dataset: str, seed: int, score: float | None, status: str = "ok", **extra: Any) -> dict[str, Any]:
    return {
        "method": method,
        "dataset": dataset,
        "seed": seed,
        "status": status,
        "test_metric": score,
        "budget_epochs": 10.0,
        "epochs_used": 10.0,
        "trials": 3,
        "final_epochs": 5,
        "search_seconds": 1.0,
        "extra": extra,
    }


def test_bootstrap_interval_of_a_constant_is_the_constant_and_widens_with_noise() -> None:
    assert bootstrap_mean([0.25, 0.25, 0.25]).as_dict() == {"mean": 0.25, "low": 0.25, "high": 0.25, "n": 3}
    wide = bootstrap_mean([-1.0, 1.0] * 10)
    assert wide.mean == 0.0
    assert -0.5 < wide.low < -0.2
    assert 0.2 < wide.high < 0.5
    assert bootstrap_mean([0.1, 0.2, 0.3, 0.4], seed=3) == bootstrap_mean([0.1, 0.2, 0.3, 0.4], seed=3)
    assert math.isnan(bootstrap_mean([math.nan]).mean)
    assert bootstrap_mean([]).n == 0


def test_pairs_match_seed_and_dataset_and_skip_failed_runs() -> None:
    outcomes = [
        _row("stagetune", "a", 0, 0.9),
        _row("tpe", "a", 0, 0.8),
        _row("stagetune", "a", 1, 0.7),
        _row("tpe", "a", 1, None, status="failed: boom"),
        _row("stagetune", "b", 0, 0.5),
        _row("tpe", "b", 0, 0.5),
    ]
    assert paired(outcomes, "tpe") == [Pair("a", 0, 0.9, 0.8), Pair("b", 0, 0.5, 0.5)]
    assert paired(outcomes, "tpe", "b") == [Pair("b", 0, 0.5, 0.5)]
    assert wins_ties_losses(paired(outcomes, "tpe")) == (1, 1, 0)
    result = comparison(outcomes, "tpe")
    assert result["difference"]["mean"] == pytest.approx(0.05)
    assert result["wins_ties_losses"] == [1, 1, 0]


def test_ranks_average_ties_and_mean_ranks_use_complete_cells_only() -> None:
    assert ranks({"x": 0.9, "y": 0.8, "z": 0.9}) == {"x": 1.5, "z": 1.5, "y": 3.0}
    outcomes = [
        _row("stagetune", "a", 0, 0.9),
        _row("tpe", "a", 0, 0.8),
        _row("stagetune", "a", 1, 0.6),
        _row("tpe", "a", 1, 0.7),
        _row("stagetune", "a", 2, 0.6),  # tpe missing: not ranked
    ]
    assert mean_ranks(outcomes, ["stagetune", "tpe"]) == ({"stagetune": 1.5, "tpe": 1.5}, 2)


def test_collapse_means_one_class_takes_nearly_every_prediction() -> None:
    assert collapsed([0.995, 0.005])
    assert collapsed([0.9897, 0.0103], balanced_accuracy=0.5047)  # caravan, seed 0, on main
    assert not collapsed([0.985, 0.015], balanced_accuracy=0.64)  # a 3%-positive set: some positives found
    assert not collapsed([0.9, 0.1])
    assert not collapsed(None)
    assert not collapsed([])


def _suite(ours: float, tpe: float, random2b: float, linear: float, shares: list[float]) -> list[dict[str, Any]]:
    rows = []
    for seed in range(4):
        jitter = 0.001 * seed
        rows += [
            _row("stagetune", "cls", seed, ours + jitter, predicted_shares=shares),
            _row("optuna-tpe", "cls", seed, tpe + jitter),
            _row("optuna-random-2B", "cls", seed, random2b + jitter),
            _row(LINEAR, "cls", seed, linear),
            _row("stagetune", "reg", seed, 0.50),
            _row("optuna-tpe", "reg", seed, 0.40),
            _row("optuna-random-2B", "reg", seed, 0.40),
            _row(LINEAR, "reg", seed, 0.51),
        ]
    return rows


DATASETS = [("cls", "balanced_accuracy"), ("reg", "r2")]


def test_verdicts_met_when_stagetune_leads_and_keeps_up_with_the_references() -> None:
    checks = verdicts(_suite(0.80, 0.70, 0.75, 0.83, [0.6, 0.4]), DATASETS)
    assert [c["met"] for c in checks] == [True, True, True, True, True]
    assert checks[2]["bound"] == pytest.approx(0.95 * 0.83)
    assert checks[3]["bound"] == pytest.approx(0.51 - 0.02)


def test_verdicts_missed_for_a_behind_stagetune_a_weak_score_and_a_collapse() -> None:
    outcomes = _suite(0.50, 0.70, 0.75, 0.83, [1.0, 0.0])
    outcomes = [
        o if o["dataset"] != "reg" or o["method"] != "stagetune" else o | {"test_metric": 0.45} for o in outcomes
    ]
    checks = verdicts(outcomes, DATASETS)
    assert [c["met"] for c in checks] == [False, False, False, False, False]
    assert "cls seed 0" in checks[-1]["reference"]
    assert verdicts([], DATASETS)[0]["met"] is None
    assert verdicts(outcomes[:4], DATASETS)[0]["met"] is None  # one data set, one seed: no interval


def test_summary_and_table_show_every_method_run() -> None:
    outcomes = _suite(0.80, 0.70, 0.75, 0.83, [0.6, 0.4])
    rows = summarise(outcomes, DATASETS)
    suite = suite_summary(outcomes)
    tpe = next(r for r in rows if r["dataset"] == "cls" and r["method"] == "optuna-tpe")
    assert tpe["versus_stagetune"]["wins_ties_losses"] == [4, 0, 0]
    assert tpe["test"]["mean"] == pytest.approx(0.7015)
    assert suite["ranked_cells"] == 8
    assert suite["mean_rank"]["stagetune"] == pytest.approx(2.0)
    # A cell where stagetune failed is not ranked; a method missing from a ranked cell is listed apart.
    extra = [_row("stagetune", "x", 0, None, status="failed: sanity_failed"), _row(LINEAR, "x", 0, 0.7)]
    partial = suite_summary([*outcomes, *extra, _row("ray-tune-asha", "cls", 0, 0.1)])
    assert partial["ranked_cells"] == 8
    assert partial["not_ranked"] == ["ray-tune-asha"]
    failed = verdicts([*outcomes, *extra], [*DATASETS, ("x", "balanced_accuracy")])
    assert failed[4]["met"] is False  # no model for the newcomer on x: the reference target is missed
    assert failed[4]["stagetune_failed"] == "failed: sanity_failed"
    text = table(rows, suite, verdicts(outcomes, DATASETS))
    assert "| cls (bal. acc) | stagetune" in text
    assert "ray-tune-asha" not in text  # not run: no row
    assert text.count("**met**") == 5


def _part(tmp_path: Path, name: str, outcomes: list[dict[str, Any]]) -> Path:
    path = tmp_path / f"{name}.json"
    document = {"benchmark": "suite", "datasets": [{"name": "cls", "metric": "balanced_accuracy"}]}
    path.write_text(json.dumps(document | {"command": name, "outcomes": outcomes}))
    return path


def test_a_ray_only_pass_takes_stagetune_budgets_and_replaces_the_skipped_rows_on_merge(tmp_path: Path) -> None:
    main = _part(
        tmp_path,
        "main",
        [
            _row("stagetune", "cls", 0, 0.8) | {"epochs_used": 115.2},
            _row("ray-tune-asha", "cls", 0, None, status="skipped"),
            _row("stagetune", "cls", 1, None, status="failed: sanity_failed") | {"epochs_used": 0.0},
            _row("ray-tune-asha", "cls", 1, None, status="skipped: no budget (stagetune failed: sanity_failed)"),
        ],
    )
    assert stagetune_budgets(main) == {("cls", 0): 116}  # rounded up; a failed run has no budget to give
    ray = _part(tmp_path, "ray", [_row("ray-tune-asha", "cls", 0, 0.7)])

    merged = merge([main, ray], tmp_path / "merged.json")

    rows = {(o["method"], o["seed"]): o["status"] for o in merged["outcomes"]}
    assert rows == {
        ("stagetune", 0): "ok",
        ("ray-tune-asha", 0): "ok",
        ("stagetune", 1): "failed: sanity_failed",
        ("ray-tune-asha", 1): "skipped: no budget (stagetune failed: sanity_failed)",
    }
    ray_row = next(r for r in merged["summary"] if r["method"] == "ray-tune-asha")
    assert ray_row["versus_stagetune"]["difference"]["mean"] == pytest.approx(0.1)
    with pytest.raises(SystemExit) as refused:  # two runs of the same cell are not merged
        merge([main, ray, ray], tmp_path / "twice.json")
    assert refused.value.code == 2


def test_a_merged_file_merged_again_keeps_every_part_s_command(tmp_path: Path) -> None:
    first = merge(
        [
            _part(tmp_path, "a", [_row("stagetune", "cls", 0, 0.8)]),
            _part(tmp_path, "b", [_row("stagetune", "cls", 1, 0.7)]),
        ],
        tmp_path / "ab.json",
    )
    assert [part["command"] for part in first["parts"]] == ["a", "b"]
    more = _part(tmp_path, "c", [_row("stagetune", "cls", 2, 0.9)])

    merged = merge([tmp_path / "ab.json", more], tmp_path / "abc.json")

    assert [part["command"] for part in merged["parts"]] == ["a", "b", "c"]
    assert merged["merged_from"] == [str(tmp_path / f"{name}.json") for name in "abc"]
    assert sorted(o["seed"] for o in merged["outcomes"]) == [0, 1, 2]


def test_suite_covers_the_kinds_of_data_the_issue_asks_for() -> None:
    classification = [d for d in SUITE.values() if d.classification]
    assert len(classification) >= 10
    assert {"diabetes", "friedman"} <= {d.name for d in SUITE.values() if not d.classification}
    assert set(QUICK_SUITE) <= set(SUITE)


# (rows, classes or None for regression, smallest class share at least, has missing values, has text columns)
EXPECTED = {
    "wine": (178, 3, 0.25, False, False),
    "glass": (214, 6, 0.04, False, False),
    "penguins": (344, 3, 0.19, True, True),
    "breast_cancer": (569, 2, 0.37, False, False),
    "titanic": (1309, 2, 0.38, True, True),
    "attrition": (1470, 2, 0.16, False, True),
    "digits": (1797, 10, 0.09, False, False),
    "credit": (4454, 2, 0.28, True, True),
    "caravan": (5822, 2, 0.05, False, False),
    "churn": (7043, 2, 0.26, True, True),
    "default": (10000, 2, 0.03, False, True),
    "diamonds": (53940, 5, 0.02, False, True),
    "diabetes": (442, None, 0, False, False),
    "concrete": (1030, None, 0, False, False),
    "friedman": (2000, None, 0, False, False),
    "ames": (2930, None, 0, True, True),
}


@pytest.mark.parametrize("name", list(SUITE))
def test_each_dataset_loads_as_described(name: str) -> None:
    dataset = SUITE[name]
    rows, classes, smallest, missing, text = EXPECTED[name]
    frame = dataset.load()
    labels = frame[dataset.target]
    assert len(frame) == rows
    assert labels.notna().all()
    assert "rownames" not in frame.columns
    features = frame.drop(columns=[dataset.target])
    assert bool(features.isna().any().any()) == missing
    assert any(not pd.api.types.is_numeric_dtype(t) for t in features.dtypes) == text
    if classes is None:
        assert dataset.metric == "r2"
        assert pd.api.types.is_numeric_dtype(labels)
        assert labels.nunique() > 100
    else:
        assert dataset.metric == "balanced_accuracy"
        assert labels.nunique() == classes
        assert labels.value_counts(normalize=True).min() >= smallest


def test_a_dataset_is_written_once_as_csv_and_run_on_source_and_target_only(tmp_path: Path) -> None:
    dataset = SUITE["penguins"]
    path = write_csv(dataset, tmp_path)
    written = pd.read_csv(path)
    assert written.shape == (344, 8)
    assert written["sex"].isna().sum() == 11
    path.write_text("kept\n")  # a second call reuses the file
    assert write_csv(dataset, tmp_path).read_text() == "kept\n"
    assert [p.name for p in tmp_path.iterdir()] == ["penguins.csv"]
    spec = suite_spec(dataset, tmp_path)
    assert spec.config_file is None
    assert spec.overrides == (f"data.source={path.resolve()}", "data.target=species")


def test_the_peers_sample_the_embedded_space_before_stage_1_resolved_rebalance_auto() -> None:
    """bench/ray_overhead.py hands the peers the config's space as written (`rebalance: [auto]`)."""
    import optuna

    from bench.space import suggest_optuna
    from schemas.search_space import SearchSpace

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    hp = suggest_optuna(study.ask(), SearchSpace())
    assert SearchSpace().rebalance.choices == ["auto"]
    assert hp.rebalance == "none"


def test_a_part_cut_short_is_completed_from_its_first_missing_seed() -> None:
    assert seeds_of(parse_args(["--first-seed", "6", "--seeds", "4"])) == [6, 7, 8, 9]
    assert seeds_of(parse_args([])) == list(range(10))
    assert seeds_of(parse_args(["--quick", "--first-seed", "3"])) == [3]


@pytest.mark.parametrize("argv", [["--first-seed", "-1"], ["--replace"]])
def test_seed_and_merge_options_that_cannot_mean_anything_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        parse_args(argv)
    assert refused.value.code == 2


def test_a_set_rerun_after_a_change_replaces_its_cells_on_merge(tmp_path: Path) -> None:
    before = _part(tmp_path, "before", [_row("stagetune", "cls", 0, 0.7), _row("stagetune", "other", 0, 0.9)])
    rerun = _part(tmp_path, "rerun", [_row("stagetune", "cls", 0, 0.8)])

    merged = merge([before, rerun], tmp_path / "merged.json", replace=True)

    assert sorted((o["dataset"], o["test_metric"]) for o in merged["outcomes"]) == [("cls", 0.8), ("other", 0.9)]
    with pytest.raises(SystemExit):  # without --replace the shared cell is refused
        merge([before, rerun], tmp_path / "refused.json")


def test_before_after_pairs_the_after_file_s_cells_with_the_before_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def cell(method: str, seed: int, score: float) -> dict[str, object]:
        return {"method": method, "dataset": "d", "seed": seed, "status": "ok", "test_metric": score}

    before = [cell("stagetune", s, 0.5) for s in range(3)] + [cell("optuna-tpe", s, 0.6) for s in range(3)]
    after = [cell("stagetune", s, 0.7) for s in range(2)] + [cell("optuna-tpe", s, 0.6) for s in range(2)]
    paths = []
    for name, rows in (("before", before), ("after", after)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps({"outcomes": rows}))
    before_after([str(paths[0]), str(paths[1]), "--peers", "optuna-tpe"])
    out = capsys.readouterr().out
    assert "2 cells" in out  # seed 2 is only in the before file
    assert "stagetune after - before: +0.2000 [+0.2000, +0.2000], 2-0-0 (2 pairs)" in out
    assert "before: stagetune - optuna-tpe: -0.1000" in out
    assert "after: stagetune - optuna-tpe: +0.1000" in out


def test_before_after_refuses_a_file_that_is_not_a_suite_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit) as stopped:
        before_after([str(other), str(tmp_path / "missing.json")])
    assert stopped.value.code == 2
    assert "other.json: not a suite result file with 'outcomes'" in capsys.readouterr().err
