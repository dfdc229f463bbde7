"""Same config and seed, same trials and test metrics: at execution.concurrency 2 (as the shipped configs
run), twice, and at concurrency 1 with as many torch threads per trial — the whole pipeline on tiny
digits, CPU.

The refinement runs TPE past its start-up trials with the median pruner on: 8 trials, 2 of them
start-up (its 2 warm-start points), in sync windows of 4 (`search.sync_window`'s default). Trials 4-7
are drawn by TPE's model and judged by the pruner from trials 0-3 whichever finished first, so the
points, values, states and epochs must agree across runs and concurrency, as must the final model's
test metrics.
"""

from pathlib import Path

import pytest

from flows.tune_pipeline import tune_pipeline
from schemas.config import ExecutionConfig, SearchConfig
from schemas.pipeline import PipelineResult, SearchStageResult
from stagetune.training.reproducibility import cpu_threads
from tests.conftest import REPO, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]
REFINE_TRIALS = 8


def digits_run(workdir: Path, concurrency: int, *overrides: str) -> PipelineResult:
    config = tiny_config(
        workdir,
        f"execution.concurrency={concurrency}",
        f"refine.n_trials={REFINE_TRIALS}",
        "refine.sampler=tpe",
        "refine.pruner=median",
        *overrides,
        config_file=REPO / "configs/digits.yaml",
    )
    result = tune_pipeline(config)
    assert result.status == "completed", result.message
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PipelineResult]:
    """Two runs as configs/digits.yaml runs (concurrency 2), and one at concurrency 1 whose trials compute on
    as many torch threads as those of concurrency 2 do (the thread count orders floating-point sums)."""
    root = tmp_path_factory.mktemp("repro")
    threads = cpu_threads(ExecutionConfig(concurrency=2))
    return {
        "a": digits_run(root / "a", 2),
        "b": digits_run(root / "b", 2),
        "c1": digits_run(root / "c1", 1, f"execution.cpu_threads_per_trial={threads}"),
    }


def trials(result: PipelineResult, stage: str) -> list[tuple[object, ...]]:
    search: SearchStageResult | None = getattr(result, stage)
    assert search is not None
    return [(t.number, t.params, t.state, t.value, t.epochs_run) for t in sorted(search.trials, key=lambda t: t.number)]


def test_two_runs_at_concurrency_two_give_identical_trial_values_and_test_metrics(
    runs: dict[str, PipelineResult],
) -> None:
    first, second = runs["a"], runs["b"]
    for stage in ("coarse", "refine"):
        assert trials(first, stage) == trials(second, stage)
    # The race the streams remove was there to lose: trials with dropout ran two at a time.
    assert first.refine is not None
    assert sum(t.hyperparams.dropout > 0 for t in first.refine.trials) >= 2
    # TPE's model drew some of them: more trials than its start-up trials, with a window's past to learn from.
    assert first.refine.sampler == "TPESampler"
    assert len(first.refine.trials) == REFINE_TRIALS
    assert SearchConfig().sync_window * 2 <= REFINE_TRIALS  # a second window, decided from the first
    assert first.best_hyperparams == second.best_hyperparams
    assert first.test_metrics == second.test_metrics


def test_concurrency_one_and_two_give_the_same_trials(runs: dict[str, PipelineResult]) -> None:
    serial, parallel = runs["c1"], runs["a"]
    for stage in ("coarse", "refine"):
        assert trials(serial, stage) == trials(parallel, stage)
    assert serial.test_metrics == parallel.test_metrics
