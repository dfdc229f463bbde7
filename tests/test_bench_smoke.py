"""The benchmark scripts keep working: each core function on tiny settings (no timing is asserted).

Ray Tune is an optional extra of the benchmarks: without it, only its rows are checked to say so.
"""

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.common import REPO, format_table, ray_available, spread, write_results
from bench.datasets import BUILTIN_SPECS
from bench.gpu import SKIPPED, parse_smi_line, run_gpu
from bench.overhead import Workload, run_overhead
from bench.overhead_split import run_split
from bench.search_efficiency import run_search_efficiency
from bench.search_report import METHODS
from bench.startup_memory import run_startup_memory
from bench.timed_model import TrainingLedger
from tests.conftest import TINY_OVERRIDES

RAY = ray_available()


@pytest.fixture(scope="module")
def _ray_shut_down_after() -> Iterator[None]:
    yield
    if RAY:
        import ray

        ray.shutdown()


def _is_ray(name: str) -> bool:
    return name.startswith("ray")


def test_spread_gives_median_quartiles_and_range() -> None:
    result = spread([5.0, 1.0, 3.0, float("nan"), 4.0, 2.0])
    assert (result.median, result.q25, result.q75, result.low, result.high, result.n) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    assert math.isnan(spread([]).median)


def test_ledger_counts_only_time_inside_a_window() -> None:
    ledger = TrainingLedger()
    ledger.add(10.0, 12.0)
    ledger.add(20.0, 21.0)
    assert ledger.total() == pytest.approx(3.0)
    assert ledger.within(11.0, 20.5) == pytest.approx(1.5)


def test_nvidia_smi_lines_parse() -> None:
    assert parse_smi_line("87, 1024\n") == (87.0, 1024.0)
    assert parse_smi_line("[N/A], 12") is None


def test_table_and_json_results(tmp_path: Path) -> None:
    assert format_table(["a", "b"], [[1, 0.123456], ["x", float("nan")]]).splitlines()[2] == "| 1 | 0.1235 |"
    path = write_results(tmp_path, "probe", {"value": float("nan"), "rows": [1.5]})
    document = json.loads(path.read_text())
    assert document["value"] is None
    assert document["rows"] == [1.5]
    assert document["machine"]["cores"] >= 1


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server", "_ray_shut_down_after")
def test_search_efficiency_has_every_method_with_finite_numbers() -> None:
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("final.")] + ["final.max_epochs=3"]
    results = run_search_efficiency([BUILTIN_SPECS["digits"]], [0], tiny, with_ray=RAY)

    rows = {r["method"]: r for r in results["summary"]}
    assert list(rows) == list(METHODS)
    budget = rows["stagetune"]["budget_epochs"]
    assert budget > 0
    for method, row in rows.items():
        if _is_ray(method) and not RAY:
            assert row["status"] == "not installed"
            continue
        assert row["status"] == "ok", method
        assert 0 < row["test"]["mean"] <= 1, method
        if method != "stagetune":
            assert row["versus_stagetune"]["difference"]["n"] == 1, method
    assert rows["optuna-random"]["epochs_used"] == budget
    assert rows["optuna-tpe-hyperband"]["epochs_used"] == budget
    assert rows["optuna-random-2B"]["epochs_used"] == 2 * budget
    if RAY:  # Ray's budget stopper may let each running trial finish its epoch
        assert budget <= rows["ray-tune-asha"]["epochs_used"] <= budget + 4
    stagetune = next(o for o in results["outcomes"] if o["method"] == "stagetune")
    assert len(stagetune["extra"]["predicted_shares"]) == 10  # digits: the final model's test predictions
    # One seed: no interval over the suite (not measured); the reference and collapse checks are measured.
    assert [t["met"] is not None for t in results["targets"]] == [False, False, True, True]
    assert "| digits (acc) | stagetune" in results["table"]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server", "_ray_shut_down_after")
def test_overhead_measures_training_and_overhead_per_tool_and_store() -> None:
    # The server store (the local one runs in the search test); Ray with actor reuse only, to stay short.
    results = run_overhead([Workload(0.01, 1, 2)], ("server",), with_ray=RAY, ray_defaults=False)

    rows = results["rows"]
    expected = {("stagetune", "server")} | ({("ray-tune (reuse_actors)", "server")} if RAY else set())
    assert {(r["tool"], r["store"]) for r in rows} == expected
    assert results["startup_seconds"]["mlflow server start"] > 0
    for row in rows:
        assert row["trials"] == 2
        # 2 trials x 1 epoch x 2 steps of 10 ms (plus, for stagetune, one final epoch).
        assert row["training_s"] >= 0.04
        assert row["wall_s"] > row["training_s"]
        assert all(math.isfinite(row[k]) for k in ("overhead_percent", "per_trial_ms", "search_overhead_percent"))
    assert results["targets"]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_overhead_split_accounts_for_the_whole_search_overhead() -> None:
    results = run_split(Workload(0.01, 1, 2))

    parts, background = results["search_ms_per_trial"], results["background_ms_per_trial"]
    assert results["trials"] == 2
    assert parts["optuna: ask (claim a trial, suggest)"] > 0
    assert parts["optuna: tell"] > 0
    assert sum(parts.values()) == pytest.approx(results["measurement"]["search_per_trial_ms"])
    # Each trial's MLflow run and records were written by the tracking thread, off the critical path.
    assert all(ms > 0 for ms in background.values())
    assert results["outside_search_s"]["report"] > 0
    assert "off the critical path" in results["table"]


@pytest.mark.integration
@pytest.mark.slow
def test_startup_memory_reads_milestones_of_a_real_cli_run() -> None:
    overrides = [*TINY_OVERRIDES, "coarse.n_trials=2", "refine.n_trials=2"]
    results = run_startup_memory(REPO / "configs" / "digits.yaml", warm_runs=0, overrides=overrides)

    (run,) = results["runs"]
    assert run["kind"] == "cold"
    assert 0 < run["flow_body_s"] <= run["sanity_s"] <= run["coarse_s"] <= run["first_trial_s"] < run["wall_s"]
    assert run["peak_tree_mib"] >= run["peak_cli_mib"] > 50
    assert run["peak_processes"] >= 2  # the CLI and Prefect's ephemeral API server
    assert [c["met"] in (True, False) for c in results["targets"]] == [True, True, True]


def test_gpu_benchmark_says_skipped_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available: see the gpu-marked test")
    results = run_gpu(quick=True)
    assert results["status"] == SKIPPED
    assert results["table"] == SKIPPED


@pytest.mark.gpu
@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server", "_ray_shut_down_after")
def test_gpu_benchmark_reports_trials_per_hour() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    results = run_gpu(quick=True)
    assert results["status"] == "ok"
    for row in results["rows"]:
        assert row["trials_per_hour"] > 0
        assert row["samples"] > 0


def test_system_metrics_cost_measures_a_reading_and_a_short_trial() -> None:
    from bench.system_metrics_cost import measure

    result = measure(5)
    assert result["readings"] == 5
    assert 0 < result["ms_per_reading"] < 1000
    assert 0 < result["ms_per_short_trial"] < 1000


def test_sync_window_cost_runs_every_arm_through_the_real_barrier() -> None:
    from bench.sync_window_cost import measure

    rows = measure(n_trials=6, concurrency=2, median=0.01, sigma=0.5, rounds=1, windows=[1, 2])
    assert [r["window"] for r in rows] == ["off", 1, 2]
    assert rows[0]["held_back_asks"] == 0  # no window, no barrier
    assert rows[1]["held_back_asks"] == 0  # window 1 caps concurrency at 1: nothing is asked ahead
    assert rows[2]["held_back_asks"] > 0  # trial 2 is asked while trial 1 still runs: held back
    assert all(math.isfinite(r["x_off"]) and r["wall_s"]["n"] == 1 for r in rows)
