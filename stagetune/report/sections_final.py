"""Sections 6 to 8: the final model, the diagnosis with next steps, and how to reproduce the run."""

from collections.abc import Mapping
from typing import Any

import yaml

from schemas.final import FinalResult, RegressionTestMetrics, TestMetrics
from schemas.pipeline import PipelineResult
from stagetune.flat_keys import flat_hyperparams
from stagetune.report.advice import CURVE_READING, Finding
from stagetune.report.figures import confusion_matrix_svg, final_curves_svg
from stagetune.report.markup import (
    Numbers,
    Scalar,
    esc,
    html_table,
    key_value_rows,
    md_table,
    paragraph,
    svg_image,
)
from stagetune.report.mlflow_io import CONFIG_ARTIFACT
from stagetune.report.model import Section
from stagetune.report.regression_plots import predicted_vs_actual_svg, residual_histogram_svg
from stagetune.secret_masking import mask_data, mask_text

MAX_CLASS_ROWS = 50
_TEST_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "loss")


def final_section(final: FinalResult | None, numbers: Numbers) -> Section:
    """Learning curves with the LR schedule, the kept epoch, test metrics, per class, and the champion decision."""
    if final is None:
        text = "No final training: the pipeline stopped before it (see the diagnosis section)."
        return Section("final", "6. Final training", paragraph(text), text)
    test = final.test
    metric_names = _TEST_METRICS if isinstance(test, TestMetrics) else _REGRESSION_METRICS
    facts: dict[str, tuple[str, Scalar]] = {
        "epochs_run": ("epochs run", final.epochs_run),
        "stopped": ("how training ended", final.stopped),
        "best_epoch": ("kept epoch (best validation loss; early-stopping point)", final.best_epoch),
    }
    facts |= {f"test.{name}": (f"test {name.replace('_', ' ')}", getattr(test, name)) for name in metric_names}
    facts["test.n_samples"] = ("test rows", test.n_samples)
    rows = key_value_rows(numbers, "final", facts)
    if final.stop_reason:
        rows.insert(2, [esc("stop reason"), esc(final.stop_reason)])
    if final.ensemble_rule is not None:
        rows.insert(0, [esc("ensemble (final.ensemble)"), esc(_members_text(final))])
    hp_rows = [[esc(k), numbers.span(f"final.hp.{k}", v)] for k, v in flat_hyperparams(final.hyperparams).items()]
    body = (
        '<div class="plots">'
        + html_table(["", "value"], rows, caption="final training and test metrics")
        + html_table(["hyperparameter", "value"], hp_rows, caption="trained with")
        + "</div>"
        + svg_image(final_curves_svg(final), "final learning curves with the learning-rate schedule")
        + _test_html(test, numbers)
        + _champion_html(final, numbers)
    )
    markdown = md_table(list(metric_names), [[numbers.text(f"final.test.{m}") for m in metric_names]])
    if isinstance(test, RegressionTestMetrics) and len(test.per_output) > 1:
        markdown += "\n\n" + md_table(
            ["output", "r2", "rmse", "mae"],
            [[o.name, f"{o.r2:.4f}", f"{o.rmse:.4g}", f"{o.mae:.4g}"] for o in test.per_output],
        )
    markdown += f"\n\n{final.epochs_run} epochs ({final.stopped}), kept epoch {final.best_epoch}."
    if final.ensemble_rule is not None:
        markdown += f" Ensemble: {_members_text(final)}."
    if final.registry is not None:
        markdown += f" Registry: {final.registry.model_name} v{final.registry.version} -> {final.registry.alias} "
        markdown += f"({final.registry.decision}: {final.registry.reason})."
    return Section("final", "6. Final training", body, markdown)


def _members_text(final: FinalResult) -> str:
    """The ensemble's members in words, and why there are as many: the test metrics are their mean prediction's;
    the curve is the first's."""
    if len(final.members) <= 1:
        return final.ensemble_rule or "one network"
    epochs = ", ".join(f"seed {m.seed}: {m.epochs_run} epochs" for m in final.members)
    return (
        f"{final.ensemble_rule}. Seeds and epochs: {epochs}. The test metrics are of their mean prediction; the "
        "curve and epochs above are the first network's"
    )


_CLASS_FIELDS = ("precision", "recall", "f1", "support")
_REGRESSION_METRICS = ("r2", "rmse", "mae", "loss")


def _test_html(test: TestMetrics | RegressionTestMetrics, numbers: Numbers) -> str:
    """Classification: confusion matrix and per-class table. Regression: predicted vs actual, residuals,
    and a per-output table for several targets."""
    if isinstance(test, TestMetrics):
        class_rows = [
            [esc(c.name)] + [numbers.span(f"final.class.{c.name}.{k}", getattr(c, k)) for k in _CLASS_FIELDS]
            for c in test.per_class[:MAX_CLASS_ROWS]
        ]
        return (
            '<div class="plots">'
            + svg_image(confusion_matrix_svg(test), "confusion matrix on the test split")
            + html_table(["class", *_CLASS_FIELDS], class_rows, caption="per class (test split)")
            + "</div>"
        )
    figures = []
    for index, output in enumerate(test.per_output[:MAX_CLASS_ROWS]):
        figures.append(svg_image(predicted_vs_actual_svg(test, index), f"predicted vs actual {output.name} (test)"))
        figures.append(svg_image(residual_histogram_svg(test, index), f"residuals of {output.name} (test)"))
    body = '<div class="plots">' + "".join(figures) + "</div>"
    if len(test.per_output) > 1:
        rows = [
            [esc(o.name)] + [numbers.span(f"final.output.{o.name}.{k}", getattr(o, k)) for k in ("r2", "rmse", "mae")]
            for o in test.per_output
        ]
        body += html_table(["output", "r2", "rmse", "mae"], rows, caption="per output (test split, original units)")
    return body


def _champion_html(final: FinalResult, numbers: Numbers) -> str:
    decision = final.registry
    if decision is None:
        return paragraph("The model was not registered.")
    delta = None if decision.previous_metric is None else decision.metric_value - decision.previous_metric
    facts: dict[str, tuple[str, Scalar]] = {
        "model_name": ("registered model", decision.model_name),
        "version": ("version", decision.version),
        "alias": ("alias", decision.alias),
        "decision": ("decision", decision.decision),
        "metric_name": ("champion metric", decision.metric_name),
        "metric_value": ("this version", decision.metric_value),
        "previous_champion_version": ("previous champion version", decision.previous_champion_version),
        "previous_metric": ("previous champion", decision.previous_metric),
        "delta": ("difference", delta),
    }
    rows = key_value_rows(numbers, "champion", facts)
    return html_table(["", "value"], rows, caption="champion decision") + paragraph(decision.reason)


def diagnosis_section(found: list[Finding], numbers: Numbers) -> Section:
    """Per stage: the finding, its evidence, the next change (and a concrete override), the rule's source."""
    rows, md_rows = [], []
    for finding in found:
        key = f"diagnosis.{finding.stage}.code"
        code = numbers.span(key, finding.code) if key not in numbers.values else esc(finding.code)
        change = esc(finding.next_action)
        if finding.overrides:
            change += "<br><code>" + esc(" ".join(f"--set {o}" for o in finding.overrides)) + "</code>"
        rows.append(
            [
                esc(finding.stage),
                code,
                esc(finding.evidence),
                change,
                f'<span class="muted">{esc(finding.rule_source)}</span>',
            ]
        )
        concrete = " ".join(f"`--set {o}`" for o in finding.overrides)
        md_rows.append(
            [
                finding.stage,
                finding.code,
                finding.next_action + (f" {concrete}" if concrete else ""),
                finding.rule_source,
            ]
        )
    body = paragraph(CURVE_READING) + html_table(
        ["stage", "finding", "evidence", "next change", "rule (TUNING-RULES.md source)"], rows
    )
    markdown = CURVE_READING + "\n\n" + md_table(["stage", "finding", "next change", "rule source"], md_rows)
    return Section("diagnosis", "7. Diagnosis and next steps", body, markdown)


def reproduce_section(
    result: PipelineResult,
    config: Mapping[str, Any] | None,
    versions: Mapping[str, str],
    versions_note: str,
    secrets: list[str],
    numbers: Numbers,
) -> Section:
    """The exact commands, the config (secrets masked), versions, seed and data fingerprint."""
    uri = mask_text(result.tracking_uri, secrets)
    commands = (
        f"export MLFLOW_TRACKING_URI='{uri}'\n"
        f"mlflow artifacts download --run-id {result.mlflow_parent_run_id} --artifact-path {CONFIG_ARTIFACT} "
        "--dst-path .\nstagetune run pipeline_config.json"
    )
    seed = config.get("seed") if config is not None else None
    concurrency = config.get("execution", {}).get("concurrency") if config is not None else None
    facts: dict[str, tuple[str, Scalar]] = {
        "run_id": ("MLflow parent run", result.mlflow_parent_run_id),
        "experiment_id": ("MLflow experiment", result.mlflow_experiment_id),
        "seed": ("seed", seed if isinstance(seed, int) else None),
        "fingerprint": ("data fingerprint", result.sample.fingerprint),
    }
    rows = [*key_value_rows(numbers, "reproduce", facts), [esc("tracking URI"), esc(uri)]]
    version_rows = [[esc(name), numbers.span(f"reproduce.version.{name}", v)] for name, v in versions.items()]
    note = "On the CPU the same config and seed give the same trials and test metrics (README, Reproducibility)"
    if concurrency is not None:
        note += (
            "; this run used execution.concurrency 1."
            if concurrency == 1
            else f"; this run used execution.concurrency {concurrency}: model-based draws after the start-up trials "
            "and pruning decisions followed timing."
        )
    config_text = (
        yaml.safe_dump(mask_data(dict(config), secrets), sort_keys=False)
        if config is not None
        else f"(no {CONFIG_ARTIFACT} on the run)"
    )
    body = (
        f"<pre>{esc(commands)}</pre>"
        + paragraph(note)
        + '<div class="plots">'
        + html_table(["", "value"], rows)
        + html_table(["package", "version"], version_rows, caption=versions_note)
        + "</div><details><summary>config (secrets masked)</summary>"
        + f"<pre>{esc(config_text)}</pre></details>"
    )
    markdown = f"```bash\n{commands}\n```\n\nSeed {seed}, data fingerprint `{result.sample.fingerprint}`. "
    markdown += ", ".join(f"{name} {v}" for name, v in versions.items()) + f" ({versions_note})."
    return Section("reproduce", "8. Reproduce", body, markdown)
