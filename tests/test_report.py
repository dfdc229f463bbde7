"""The tuning report of a tiny digits run: each section's numbers against the stage results; MLflow; Prefect."""

import asyncio
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from flows.tune_pipeline import tune_pipeline
from schemas.config import PipelineConfig
from schemas.hyperparams import HyperParams
from schemas.pipeline import PipelineResult, SearchStageResult
from schemas.search import TrialRecord
from schemas.search_space import CategoricalParam
from stagetune.config_loading import load_config
from stagetune.diagnosis import PROBLEMS
from stagetune.flat_keys import flat_hyperparams
from stagetune.report.advice import concrete_overrides
from stagetune.report.build import build_report, write_report
from stagetune.report.importance import rank_importances
from stagetune.report.markup import Numbers, esc
from stagetune.report.mlflow_io import load_run_config, trial_history
from stagetune.report.sections_final import reproduce_section
from stagetune.stages.search_summary import top_trials
from tasks.report import report_artifact_key
from tests.conftest import tiny_config
from tests.report_fixtures import ReportedRun, many_trials, reported_run, run_cli

__all__ = ["reported_run"]  # the shared session fixture (one tiny pipeline run), imported for pytest

SECTION_IDS = ["data", "sanity", "coarse", "narrowing", "refine", "final", "diagnosis", "reproduce"]


def _numbers(run: ReportedRun) -> dict[str, Any]:
    return dict(run.summary["numbers"])


def _section_html(run: ReportedRun, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', run.html, flags=re.DOTALL)
    assert match, section_id
    return match.group(1)


@pytest.mark.integration
@pytest.mark.slow
def test_report_has_the_eight_sections_in_order(reported_run: ReportedRun) -> None:
    summary = reported_run.summary
    assert [s["id"] for s in summary["sections"]] == SECTION_IDS
    assert [s["title"].split(".")[0] for s in summary["sections"]] == [str(i) for i in range(1, 9)]
    assert summary["run_id"] == reported_run.result.mlflow_parent_run_id
    assert summary["numbers"]["run.status"] == "completed"
    markdown = (reported_run.report_dir / "report.md").read_text(encoding="utf-8")
    for section in summary["sections"]:
        assert f"## {section['title']}" in markdown
    assert reported_run.result.message in markdown


@pytest.mark.integration
@pytest.mark.slow
def test_every_key_number_is_shown_in_the_html_as_recorded(reported_run: ReportedRun) -> None:
    html = reported_run.html
    texts = reported_run.summary["texts"]
    assert len(texts) > 100
    for key, text in texts.items():
        assert f'data-key="{key}">{text}</span>' in html.replace("&#x27;", "'"), key


@pytest.mark.integration
@pytest.mark.slow
def test_data_section_matches_the_sample_result(reported_run: ReportedRun) -> None:
    numbers, sample = _numbers(reported_run), reported_run.result.sample
    for name in ("n_rows", "n_train", "n_val", "n_test", "n_train_sampled", "n_val_sampled", "num_classes"):
        assert numbers[f"data.{name}"] == getattr(sample, name), name
    assert numbers["data.fingerprint"] == sample.fingerprint
    assert numbers["data.rebalance"] == sample.rebalance
    for name, count in sample.class_counts_train.items():
        assert numbers[f"data.class.{name}.train"] == count
        assert numbers[f"data.class.{name}.sampled"] == sample.class_counts_sampled[name]
        assert numbers[f"data.class.{name}.rebalanced"] == sample.class_counts_rebalanced[name]
    assert sum(numbers[f"data.class.{n}.sampled"] for n in sample.class_names) == sample.n_train_sampled
    assert _section_html(reported_run, "data").count("<img") == 1  # the class-distribution chart


@pytest.mark.integration
@pytest.mark.slow
def test_sanity_section_matches_the_sanity_result(reported_run: ReportedRun) -> None:
    numbers, sanity = _numbers(reported_run), reported_run.result.sanity
    assert sanity is not None
    for name in ("initial_loss", "expected_initial_loss", "overfit_train_acc", "overfit_steps", "lr_suggestion"):
        assert numbers[f"sanity.{name}"] == getattr(sanity, name), name
    assert numbers["sanity.expected_initial_loss"] == pytest.approx(math.log(10))
    assert numbers["sanity.passed"] is True
    assert sanity.baseline is not None
    assert numbers["sanity.baseline_val_acc"] == sanity.baseline.history[-1].val_acc
    assert _section_html(reported_run, "sanity").count("<img") == 3  # overfit, LR range, baseline curves


def _check_search_numbers(numbers: dict[str, Any], stage: SearchStageResult) -> None:
    prefix = stage.stage
    assert numbers[f"{prefix}.n_trials"] == len(stage.trials)
    for state in ("COMPLETE", "PRUNED", "FAIL"):
        assert numbers[f"{prefix}.{state.lower()}"] == stage.counts[state]
    assert stage.best is not None
    assert numbers[f"{prefix}.best_number"] == stage.best.number
    assert numbers[f"{prefix}.best_value"] == stage.best.value
    assert numbers[f"{prefix}.epochs"] == stage.epochs
    ranked = top_trials(stage.trials, stage.direction, 10)
    for rank, trial in enumerate(ranked, start=1):
        assert numbers[f"{prefix}.top.{rank}.number"] == trial.number
        assert numbers[f"{prefix}.top.{rank}.value"] == trial.value


@pytest.mark.integration
@pytest.mark.slow
def test_coarse_section_matches_the_coarse_result(reported_run: ReportedRun) -> None:
    coarse = reported_run.result.coarse
    assert coarse is not None
    _check_search_numbers(_numbers(reported_run), coarse)
    html = _section_html(reported_run, "coarse")
    sampled = {"learning_rate" if n.startswith("learning_rate") else n for t in coarse.trials for n in t.params}
    assert html.count('class="small"') == len(sampled)  # one scatter per hyperparameter
    for name in sampled:
        log = name in ("learning_rate", "weight_decay", "width")
        suffix = " (log scale)" if log else ""  # log-scale parameters get a log x-axis
        assert f'alt="val_loss against {name}{suffix}"' in html, name
    assert "learning curves of the best 3 trials" in html


@pytest.mark.integration
@pytest.mark.slow
def test_learning_curves_are_the_trials_own_mlflow_histories(reported_run: ReportedRun) -> None:
    result = reported_run.result
    client = MlflowClient(result.tracking_uri)
    for stage in (result.coarse, result.refine):
        assert stage is not None
        for trial in top_trials(stage.trials, stage.direction, 3):
            history = trial_history(client, trial.mlflow_run_id or "")
            assert len(history) == trial.epochs_run
            # The objective is val_loss at the trial's best epoch: the curve must contain it.
            assert min(r.val_loss for r in history if r.val_loss is not None) == pytest.approx(trial.value)


@pytest.mark.integration
@pytest.mark.slow
def test_narrowing_section_matches_the_narrowing_report(reported_run: ReportedRun) -> None:
    numbers, narrowing = _numbers(reported_run), reported_run.result.narrowing
    assert narrowing is not None
    assert numbers["narrowing.n_completed"] == narrowing.n_completed
    assert numbers["narrowing.top_trials"] == ", ".join(map(str, narrowing.top_trials))
    for change in narrowing.changes:
        if isinstance(change.new, CategoricalParam):
            assert numbers[f"narrowing.{change.name}.choices"] == "{" + ", ".join(map(str, change.new.choices)) + "}"
        else:
            assert numbers[f"narrowing.{change.name}.low"] == change.new.low
            assert numbers[f"narrowing.{change.name}.high"] == change.new.high
    html = _section_html(reported_run, "narrowing")
    assert all(change.reason.split(";")[0].replace("'", "&#x27;") in html for change in narrowing.changes)
    assert html.count("<img") == 1


@pytest.mark.integration
@pytest.mark.slow
def test_refine_section_matches_the_refine_result(reported_run: ReportedRun) -> None:
    numbers, refine = _numbers(reported_run), reported_run.result.refine
    assert refine is not None
    _check_search_numbers(numbers, refine)
    importances = {k.removeprefix("refine.importance."): v for k, v in numbers.items() if "importance" in k}
    assert importances, "the study is in the run's local Optuna storage: importances must be computed"
    assert sum(importances.values()) == pytest.approx(1.0)
    assert set(importances) <= {name for t in refine.trials for name in t.params}
    html = _section_html(reported_run, "refine")
    assert "fANOVA (Optuna, on the stored study)" in html
    for alt in (
        "optimisation history",
        "epochs run per trial by state",
        "parameter importances",
        "parallel coordinates",
    ):
        assert f'alt="{alt}"' in html


@pytest.mark.integration
@pytest.mark.slow
def test_final_section_matches_the_final_result(reported_run: ReportedRun) -> None:
    numbers, final = _numbers(reported_run), reported_run.result.final
    assert final is not None
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "loss"):
        assert numbers[f"final.test.{name}"] == getattr(final.test, name) == reported_run.result.test_metrics[name]
    assert numbers["final.test.n_samples"] == final.test.n_samples == reported_run.result.sample.n_test
    assert numbers["final.epochs_run"] == final.epochs_run
    assert numbers["final.best_epoch"] == final.best_epoch
    assert numbers["final.stopped"] == final.stopped
    for row in final.test.per_class:
        for field in ("precision", "recall", "f1", "support"):
            assert numbers[f"final.class.{row.name}.{field}"] == getattr(row, field)
    assert reported_run.result.best_hyperparams is not None
    # Flat keys, as the MLflow params: a model's own hyperparameters would be rows params.<name>.
    for name, value in flat_hyperparams(reported_run.result.best_hyperparams).items():
        assert numbers[f"final.hp.{name}"] == value
    assert final.registry is not None
    assert numbers["champion.version"] == final.registry.version
    assert numbers["champion.alias"] == final.registry.alias
    assert numbers["champion.decision"] == final.registry.decision
    assert numbers["champion.metric_value"] == final.registry.metric_value
    html = _section_html(reported_run, "final")
    assert 'alt="final learning curves with the learning-rate schedule"' in html
    assert 'alt="confusion matrix on the test split"' in html


@pytest.mark.integration
@pytest.mark.slow
def test_diagnosis_section_names_each_stage_finding_and_a_valid_next_change(reported_run: ReportedRun) -> None:
    numbers, result = _numbers(reported_run), reported_run.result
    assert result.coarse is not None
    assert result.refine is not None
    assert result.final is not None
    for stage in (result.coarse, result.refine):
        # The verdict of the stage's best trials; without a clear majority "mixed" (some problem) or "ok".
        summary = stage.diagnosis
        problems = any(code in PROBLEMS for code in summary.top_counts)
        assert numbers[f"diagnosis.{stage.stage}.code"] == (summary.verdict or ("mixed" if problems else "ok"))
    assert numbers["diagnosis.final.code"] == result.final.diagnosis.code
    html = _section_html(reported_run, "diagnosis")
    assert result.final.diagnosis.rule_source in html
    assert "Curves are read on training vs validation loss, for classification and regression alike" in html
    assert "TUNING-RULES.md" in html
    overrides = re.findall(r"--set (\S+?)(?=<| --set|$)", html)
    assert overrides, "the tiny run's curves are short: at least one stage needs a concrete change"
    load_config(None, overrides)  # every suggested override is a valid setting


@pytest.mark.integration
@pytest.mark.slow
def test_reproduce_section_has_command_seed_fingerprint_and_versions(reported_run: ReportedRun) -> None:
    numbers, result = _numbers(reported_run), reported_run.result
    assert numbers["reproduce.run_id"] == result.mlflow_parent_run_id
    assert numbers["reproduce.seed"] == 0
    assert numbers["reproduce.fingerprint"] == result.sample.fingerprint
    versions = {k.removeprefix("reproduce.version."): v for k, v in numbers.items() if ".version." in k}
    assert {"python", "torch", "optuna", "mlflow", "prefect"} <= set(versions)
    html = _section_html(reported_run, "reproduce")
    assert f"mlflow artifacts download --run-id {result.mlflow_parent_run_id}" in html
    assert "stagetune run pipeline_config.json" in html


@pytest.mark.integration
@pytest.mark.slow
def test_secrets_are_masked_in_the_reproduce_section(reported_run: ReportedRun) -> None:
    result = reported_run.result
    config = load_run_config(MlflowClient(result.tracking_uri), result.mlflow_parent_run_id)
    assert config is not None
    config["search"]["storage"] = "postgresql+psycopg://tuner:hunter2pw@db:5432/optuna"
    config["execution"]["dask_address"] = "tcp://scheduler:8786"
    config["extra_api_token"] = "tok-123456"
    leaky = result.model_copy(update={"tracking_uri": "https://alice:s3cr3tpw@mlflow.example:5000"})
    section = reproduce_section(leaky, config, {"python": "3"}, "test", ["AKIAEXAMPLEKEY"], Numbers())
    for text in (section.html, section.markdown):
        assert "hunter2pw" not in text
        assert "s3cr3tpw" not in text
        assert "tok-123456" not in text
    assert "tuner:***@db" in section.html
    assert "alice:***@mlflow.example" in section.html
    assert "tcp://scheduler:8786" in section.html  # no credentials: left as is


def test_rank_importances_find_the_parameter_that_drives_the_objective() -> None:
    trials = [
        TrialRecord(
            number=i,
            state="COMPLETE",
            value=0.1 * i + 0.01 * (i % 2),  # follows the learning rate; barely the batch norm flag
            hyperparams=HyperParams(),
            params={"learning_rate_adam": 1e-4 * 2**i, "batch_norm": i % 2 == 0, "dropout": 0.1 * ((7 * i) % 5)},
        )
        for i in range(12)
    ]
    importances = rank_importances(trials)
    assert next(iter(importances)) == "learning_rate_adam"
    assert sum(importances.values()) == pytest.approx(1.0)
    assert importances["learning_rate_adam"] > 3 * importances["batch_norm"]


def test_concrete_next_changes_are_valid_overrides() -> None:
    config = PipelineConfig().model_dump(mode="json")
    assert concrete_overrides("final", "not_converged", config) == ["final.max_epochs=100"]
    # More capacity and less regularisation, each from the configured range.
    assert concrete_overrides("coarse", "underfitting", config) == [
        "space.width.high=1024",
        "space.depth.high=4",
        "space.dropout.high=0.25",
        "space.weight_decay.high=0.01",
    ]
    # weight decay already reaches 0.1 (the hard limit) by default: only dropout is left to raise
    assert concrete_overrides("refine", "overfitting", config) == ["space.dropout.high=0.7"]
    narrow_decay = load_config(None, ["space.weight_decay.high=1e-3"]).model_dump(mode="json")
    assert concrete_overrides("refine", "overfitting", narrow_decay) == [
        "space.dropout.high=0.7",
        "space.weight_decay.high=0.01",
    ]
    lowered = concrete_overrides("coarse", "diverged", config)
    assert lowered == [
        "space.learning_rate.sgd.high=0.03",
        "space.learning_rate.adam.high=0.003",
        "space.learning_rate.adamw.high=0.003",
    ]
    load_config(None, lowered)
    assert concrete_overrides("final", "ok", config) == []
    assert concrete_overrides("final", "not_converged", None) == []
    at_limit = load_config(None, ["space.width.high=4096", "space.depth.high=8"]).model_dump(mode="json")
    # Nothing left to widen within the limits: only the regularisation comes down.
    assert concrete_overrides("coarse", "underfitting", at_limit) == [
        "space.dropout.high=0.25",
        "space.weight_decay.high=0.01",
    ]


def test_numbers_are_shown_as_recorded() -> None:
    numbers = Numbers()
    assert numbers.span("a.b", 0.123456) == '<span class="num" data-key="a.b">0.1235</span>'
    assert numbers.put("n", 7) == "7"
    assert numbers.put("flag", True) == "yes"
    assert numbers.put("missing", None) == "n/a"
    with pytest.raises(ValueError, match="twice"):
        numbers.put("n", 8)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_run_stopped_by_the_gate_gets_a_report_of_why(tmp_path: Path) -> None:
    broken = tiny_config(tmp_path, "model.family=custom", "model.import_path=tests.broken_models:nan_output")
    result = tune_pipeline(broken)
    assert result.status == "sanity_failed"
    assert result.sanity is not None
    files = write_report(build_report(result, MlflowClient(result.tracking_uri)), tmp_path / "report")
    # NaN is not JSON: the summary holds it as a string, as the stage results do.
    summary = json.loads(files.summary.read_text(encoding="utf-8"), parse_constant=pytest.fail)
    numbers = summary["numbers"]
    assert numbers["run.status"] == "sanity_failed"
    assert numbers["sanity.passed"] is False
    assert numbers["sanity.initial_loss"] == "nan"
    assert numbers["diagnosis.sanity.code"] == result.sanity.diagnoses[0].code
    assert not any(key.startswith(("coarse.", "refine.", "final.")) for key in numbers)
    html = files.html.read_text(encoding="utf-8")
    assert html.count("This stage did not run") == 3  # coarse, narrowing, refinement
    assert "No final training" in html
    for diagnosis in result.sanity.diagnoses:
        assert esc(diagnosis.next_action) in html


@pytest.mark.integration
@pytest.mark.slow
def test_report_is_attached_to_the_parent_mlflow_run(reported_run: ReportedRun) -> None:
    client = MlflowClient(reported_run.result.tracking_uri)
    paths = {a.path for a in client.list_artifacts(reported_run.result.mlflow_parent_run_id, "report")}
    assert {"report/report.html", "report/report.md"} <= paths
    size = (reported_run.report_dir / "report.html").stat().st_size
    assert 50_000 < size < 3_000_000
    assert "<script" not in reported_run.html
    assert "http://" not in reported_run.html.split("<main>")[0]  # nothing remote in the head


@pytest.mark.integration
@pytest.mark.slow
def test_flow_publishes_the_report_in_mlflow_and_as_a_prefect_artifact(reported_run: ReportedRun) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    result = reported_run.result
    run_dir = Path(
        MlflowClient(result.tracking_uri).get_run(result.mlflow_parent_run_id).data.tags["stagetune.run_dir"]
    )
    assert (run_dir / "report" / "report.html").is_file()  # only the flow writes here; the CLI wrote to --out

    async def read() -> list[Any]:
        async with get_client() as client:
            filters = ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[reported_run.flow_run_id]),
                key=ArtifactFilterKey(any_=[report_artifact_key(result.name)]),
            )
            return list(await client.read_artifacts(artifact_filter=filters))

    artifacts = asyncio.run(read())
    assert len(artifacts) == 1
    assert artifacts[0].type == "markdown"
    markdown = str(artifacts[0].data)
    assert markdown.startswith(f"# Tuning report: {result.name}")
    assert result.mlflow_parent_run_id in markdown
    assert f"{result.test_metrics['accuracy']:.4g}" in markdown


@pytest.mark.integration
@pytest.mark.slow
def test_report_command_rejects_an_unknown_run(reported_run: ReportedRun, tmp_path: Path) -> None:
    outcome = run_cli("report", "0" * 32, "--out", str(tmp_path), "--tracking-uri", reported_run.result.tracking_uri)
    assert outcome.exit_code == 2
    assert "RUN_ID" in outcome.output
    assert not list(tmp_path.iterdir())


@pytest.mark.integration
@pytest.mark.slow
def test_hundreds_of_trials_give_a_small_report(reported_run: ReportedRun, tmp_path: Path) -> None:
    result = reported_run.result
    assert result.coarse is not None
    assert result.refine is not None
    big = result.model_copy(
        update={"coarse": many_trials(result.coarse, 400), "refine": many_trials(result.refine, 300)}
    )
    started = time.perf_counter()
    files = write_report(build_report(big, MlflowClient(result.tracking_uri)), tmp_path)
    seconds = time.perf_counter() - started
    size = files.html.stat().st_size
    print(f"700-trial report: {size / 1e6:.2f} MB in {seconds:.1f} s")
    assert size < 10_000_000
    summary = files.summary.read_text(encoding="utf-8")
    assert '"coarse.n_trials": 400' in summary
    assert '"refine.n_trials": 300' in summary


@pytest.fixture(scope="module")
def second_run(reported_run: ReportedRun) -> PipelineResult:
    """A second run in the same stores with fewer coarse trials: the other side of a comparison."""
    return tune_pipeline(tiny_config(reported_run.workdir, "coarse.n_trials=3", "tracking.report=true"))


@pytest.mark.integration
@pytest.mark.slow
def test_compare_shows_config_diff_params_metrics_and_the_stage_that_moved(
    reported_run: ReportedRun, second_run: PipelineResult, tmp_path: Path
) -> None:
    first = reported_run.result
    args = ["compare", first.mlflow_parent_run_id, second_run.mlflow_parent_run_id, "--out", str(tmp_path)]
    outcome = run_cli(*args, "--tracking-uri", first.tracking_uri)
    assert outcome.exit_code == 0, outcome.output
    assert "coarse.n_trials" in outcome.output
    assert "Config differs in: coarse." in outcome.output
    assert "Moved most:" in outcome.output
    html = (tmp_path / "compare.html").read_text(encoding="utf-8")
    assert "<td>coarse.n_trials</td><td>4</td><td>3</td>" in html
    assert html.count("<td>coarse.") == 1  # the only config key that differs
    for name in ("accuracy", "balanced_accuracy", "macro_f1"):
        a, b = first.test_metrics[name], second_run.test_metrics[name]
        assert f"<td>{name}</td><td>{a:.4g}</td><td>{b:.4g}</td>" in html
    assert first.coarse is not None
    assert second_run.coarse is not None
    assert first.coarse.best is not None
    assert second_run.coarse.best is not None
    assert f"<td>coarse</td><td>best val_loss</td><td>{first.coarse.best.value:.4g}</td>" in html
