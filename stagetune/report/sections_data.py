"""Sections 1 and 2: the data the search tuned on, and the sanity gate that let it start."""

import math

from schemas.results import SampleResult, SanityResult
from stagetune.report.figures import class_distribution_svg, lr_range_svg, overfit_svg
from stagetune.report.markup import Numbers, Scalar, esc, html_table, key_value_rows, md_table, paragraph, svg_image
from stagetune.report.model import Section
from stagetune.secret_masking import mask_text
from stagetune.tracking.svg_curves import learning_curve_svg

MAX_CLASS_ROWS = 50  # a table row per class up to this many; the chart still shows every class


def data_section(sample: SampleResult, numbers: Numbers) -> Section:
    """Sizes, fingerprints and the class distribution before and after sampling and rebalancing."""
    sizes: dict[str, tuple[str, Scalar]] = {
        "task": ("task", f"{sample.task} ({sample.task_reason})" if sample.task_reason else sample.task),
        "n_rows": ("rows in the source", sample.n_rows),
        "n_train": ("train split", sample.n_train),
        "n_val": ("validation split", sample.n_val),
        "n_test": ("test split", sample.n_test),
        "n_train_sampled": ("train rows the search tuned on", sample.n_train_sampled),
        "n_val_sampled": ("validation rows the search tuned on", sample.n_val_sampled),
        "num_classes": ("classes", sample.num_classes),
        "rebalance": ("rebalancing strategy", sample.rebalance),
        "objective": ("search objective", _objective(sample)),
        "fingerprint": ("data fingerprint (sha256)", sample.fingerprint),
        "sampled_fingerprint": ("sampled data fingerprint", sample.sampled_fingerprint),
    }
    rows = [[esc("source"), esc(mask_text(sample.source))], *key_value_rows(numbers, "data", sizes)]
    class_rows = []
    for name in list(sample.class_counts_train)[:MAX_CLASS_ROWS]:
        counts = (
            sample.class_counts_train.get(name, 0),
            sample.class_counts_sampled.get(name, 0),
            sample.class_counts_rebalanced.get(name, 0),
        )
        spans = [numbers.span(f"data.class.{name}.{kind}", count) for kind, count in zip(_KINDS, counts, strict=True)]
        class_rows.append([esc(name), *spans])
    notes = [f"dropped constant/empty columns: {', '.join(sample.dropped_columns)}"] if sample.dropped_columns else []
    if sample.dropped_label_rows:
        notes.append(f"{sample.dropped_label_rows} rows dropped for a missing label (target), never imputed")
    notes += sample.warnings
    if sample.defaults is not None:
        chosen = sample.defaults.settings
        notes += [
            f"{'image data, left unset' if reason.split(' -> ', 1)[0] in chosen else 'resolved from the labels'}: "
            f"{reason}"
            for reason in sample.defaults.reasons
        ]
    if sample.task == "regression":
        sizes.pop("num_classes", None)
        target_rows = [
            [esc(name), numbers.span(f"data.target.{name}.mean", mean), numbers.span(f"data.target.{name}.std", std)]
            for name, mean, std in zip(sample.target_names, sample.target_mean, sample.target_std, strict=True)
        ]
        detail = html_table(
            ["target", "train mean", "train std"],
            target_rows,
            caption="targets, standardised with these for training; metrics are in the original units",
        )
    else:
        detail = (
            '<div class="plots">'
            + svg_image(class_distribution_svg(sample), "class distribution before and after sampling and rebalancing")
            + html_table(
                ["class", "train (full)", "sampled", f"per epoch ({sample.rebalance})"], class_rows, caption="per class"
            )
            + "</div>"
        )
    body = (
        html_table(["", "value"], rows, caption="sizes and fingerprints")
        + detail
        + "".join(paragraph(note) for note in notes)
    )
    markdown = md_table(
        ["rows", "train", "val", "test", "tuned on (train/val)", "classes", "rebalance"],
        [
            [
                sample.n_rows,
                sample.n_train,
                sample.n_val,
                sample.n_test,
                f"{sample.n_train_sampled}/{sample.n_val_sampled}",
                sample.num_classes,
                sample.rebalance,
            ]
        ],
    )
    markdown += f"\n\nData fingerprint `{sample.fingerprint}`. Search objective: {_objective(sample)}."
    return Section("data", "1. Data", body, markdown)


_KINDS = ("train", "sampled", "rebalanced")


def _objective(sample: SampleResult) -> str:
    defaults = sample.defaults
    if defaults is None:
        return "as configured"
    weighted = " (class-weighted)" if defaults.balanced_val_loss and defaults.objective == "val_loss" else ""
    ratio = "" if defaults.imbalance_ratio is None else f"; largest/smallest class {defaults.imbalance_ratio:.3g}x"
    return f"{defaults.objective}{weighted}, champion metric {defaults.champion_metric}{ratio}"


def sanity_section(sanity: SanityResult | None, numbers: Numbers) -> Section:
    """Initial loss against ln(C), the overfit test, the LR range test and the baseline fit."""
    if sanity is None:
        text = "The sanity gate was disabled (sanity.enabled = false): nothing was checked before the search."
        return Section("sanity", "2. Sanity", paragraph(text), text)
    relative = abs(sanity.initial_loss - sanity.expected_initial_loss) / sanity.expected_initial_loss
    regression = sanity.task == "regression"
    expected_name = "zero-output loss on standardised targets" if regression else "ln C (chance level)"
    score_name = "overfit train R²" if regression else "overfit train accuracy"
    facts: dict[str, tuple[str, Scalar]] = {
        "passed": ("gate passed", sanity.passed),
        "initial_loss": ("initial loss", sanity.initial_loss),
        "expected_initial_loss": (expected_name, sanity.expected_initial_loss),
        "initial_loss_ok": ("initial loss within tolerance", sanity.initial_loss_ok),
        "overfit_samples": ("overfit test rows", sanity.overfit_samples),
        "overfit_steps": ("overfit test steps", sanity.overfit_steps),
        "overfit_train_acc": (score_name, sanity.overfit_train_acc),
        "overfit_ok": ("overfit test passed", sanity.overfit_ok),
        "lr_suggestion": ("LR range test suggestion", sanity.lr_suggestion),
    }
    if sanity.overfit_target is not None:
        # Lower than sanity.overfit_target_acc when identical inputs carry different targets.
        facts["overfit_target"] = ("overfit target (share of what memorising can reach)", sanity.overfit_target)
    rows = key_value_rows(numbers, "sanity", facts)
    deviation = "|initial - expected| / expected" if regression else "|initial - ln C| / ln C"
    rows.insert(3, [esc(deviation), esc(f"{relative:.1%}" if math.isfinite(relative) else "n/a")])
    plots = [svg_image(overfit_svg(sanity), "overfit test loss per step, with ln C")]
    if sanity.lr_range:
        plots.append(svg_image(lr_range_svg(sanity.lr_range, sanity.lr_suggestion), "LR range test"))
    baseline = sanity.baseline
    if baseline is not None and baseline.history:
        plots.append(svg_image(learning_curve_svg(baseline.history, "baseline fit"), "baseline learning curves"))
        last = baseline.history[-1]
        score, _, val_score = last.score_pair()
        rows.append([esc(f"baseline final val {score}"), numbers.span("sanity.baseline_val_acc", val_score)])
    diagnoses = "".join(
        f'<p class="bad">{esc(d.code)}: {esc(d.message)}; next: {esc(d.next_action)} '
        f'<span class="muted">({esc(d.rule_source)})</span></p>'
        for d in sanity.diagnoses
    )
    body = html_table(["check", "value"], rows) + diagnoses + '<div class="plots">' + "".join(plots) + "</div>"
    verdict = "passed" if sanity.passed else "FAILED"
    markdown = (
        f"Gate **{verdict}**: initial loss {numbers.text('sanity.initial_loss')} vs {expected_name} "
        f"{numbers.text('sanity.expected_initial_loss')}; {score_name} "
        f"{numbers.text('sanity.overfit_train_acc')} in {sanity.overfit_steps} steps; "
        f"suggested learning rate {numbers.text('sanity.lr_suggestion')}."
    )
    markdown += "".join(f"\n- {d.code}: {d.message}; next: {d.next_action}" for d in sanity.diagnoses)
    return Section("sanity", "2. Sanity", body, markdown)
