"""Sections 3 to 5: the coarse search, how it narrowed the space, and the refinement."""

import math
from collections.abc import Sequence

from mlflow.tracking import MlflowClient

from schemas.hyperparams import HyperParams
from schemas.pipeline import SearchStageResult
from schemas.search import NarrowingReport, TrialRecord
from schemas.search_space import CategoricalParam, Param
from stagetune.flat_keys import flat_hyperparams
from stagetune.report.figures import best_curves_svg, narrowing_svg, trial_states_svg
from stagetune.report.importance import Importances
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
from stagetune.report.mlflow_io import trial_history
from stagetune.report.model import Section
from stagetune.report.sections_reuse import reuse_block
from stagetune.report.svg_scatter import param_scatter_svg
from stagetune.stages.search_summary import top_trials
from stagetune.tracking.study_plots import history_svg, importances_svg, parallel_coordinates_svg

BEST_CURVES = 3  # learning curves of this many best trials per stage (each costs a few MLflow reads)
TOP_ROWS = 10  # rows of the best-trials table
_SHOWN_PARAMS = ("optimizer", "learning_rate", "weight_decay", "dropout", "batch_size", "width", "depth")


def coarse_section(
    stage: SearchStageResult | None,
    narrowing: NarrowingReport | None,
    client: MlflowClient,
    numbers: Numbers,
    final: HyperParams | None = None,
) -> Section:
    """Objective against each hyperparameter (top trials ringed), the best trials and their learning curves,
    and the points reused from earlier runs (`final`: the run's best hyperparameters, to say if one won again)."""
    if stage is None:
        return _not_run("coarse", "3. Coarse search")
    highlighted = narrowing.top_trials if narrowing is not None and narrowing.top_trials else None
    top = _top(stage, len(highlighted) if highlighted else BEST_CURVES)
    ringed = highlighted if highlighted is not None else [t.number for t in top]
    scatter = "".join(_param_scatters(stage, set(ringed)))
    body = (
        _facts_table(stage, numbers)
        + f"<h3>{esc(stage.objective)} against each hyperparameter</h3>"
        + paragraph(f"Ringed: the trials the narrowing was built around ({', '.join(map(str, ringed)) or 'none'}).")
        + f'<div class="plots">{scatter}</div>'
        + _best_curves(stage, client)
        + _top_table(stage, numbers)
    )
    reuse_html, reuse_markdown = reuse_block(stage, final, numbers)
    markdown = _stage_markdown(stage, numbers) + f"\n\n{reuse_markdown}"
    return Section("coarse", "3. Coarse search", body + reuse_html, markdown)


def refine_section(
    stage: SearchStageResult | None, importances: Importances | None, client: MlflowClient, numbers: Numbers
) -> Section:
    """Optimisation history, parameter importances, parallel coordinates, pruned vs completed, best curves."""
    if stage is None:
        return _not_run("refine", "5. Refinement")
    minimize = stage.direction == "minimize"
    plots = [
        svg_image(history_svg(stage.trials, stage.objective, minimize), "optimisation history"),
        svg_image(trial_states_svg(stage.trials, stage.epochs), "epochs run per trial by state"),
        svg_image(parallel_coordinates_svg(stage.trials, stage.objective, minimize), "parallel coordinates"),
    ]
    if importances is not None and importances.values:
        figure = importances_svg(importances.values, x_label="importance")
        plots.insert(2, svg_image(figure, "parameter importances"))
        rows = [[esc(name), numbers.span(f"refine.importance.{name}", v)] for name, v in importances.values.items()]
        plots.insert(3, html_table(["parameter", "importance"], rows, caption="importances"))
        note = f"Parameter importances: {importances.method}."
    else:
        note = "Parameter importances: not computed (fewer than 3 completed trials)."
    enqueued = f"Warm start: trials {', '.join(map(str, stage.enqueued))} were the best coarse points, enqueued."
    body = (
        _facts_table(stage, numbers)
        + paragraph(enqueued if stage.enqueued else "No warm start.")
        + paragraph(note)
        + '<div class="plots">'
        + "".join(plots)
        + "</div>"
        + _best_curves(stage, client)
        + _top_table(stage, numbers)
    )
    return Section("refine", "5. Refinement", body, _stage_markdown(stage, numbers) + f"\n\n{note}")


def narrowing_section(report: NarrowingReport | None, numbers: Numbers) -> Section:
    """Old against new range per parameter, with the reason for each change."""
    if report is None:
        return _not_run("narrowing", "4. Narrowing")
    facts: dict[str, tuple[str, Scalar]] = {
        "fallback": ("space kept unchanged (too few completed trials)", report.fallback),
        "n_completed": ("completed coarse trials", report.n_completed),
        "top_trials": ("built around trials", ", ".join(map(str, report.top_trials)) or "none"),
    }
    rows = []
    for change in report.changes:
        rows.append(
            [
                esc(change.name),
                esc(change.action),
                esc(_range_text(change.old)),
                _new_range_html(change.name, change.new, numbers),
                esc(change.reason),
            ]
        )
    body = html_table(["", "value"], key_value_rows(numbers, "narrowing", facts)) + paragraph(report.reason)
    if report.hard_limits_hit:
        body += paragraph(f"Clipped at a hard limit: {', '.join(report.hard_limits_hit)}.")
    shift = "" if report.diagnosis_shift is None else f"Moved by the coarse diagnosis: {report.diagnosis_shift}."
    if shift:
        body += paragraph(shift)
    body += html_table(["parameter", "action", "old", "new", "reason"], rows)
    if any(c.kind != "categorical" for c in report.changes):
        body += svg_image(narrowing_svg(report.changes), "old and new range per parameter")
    markdown = (
        report.reason
        + (f"\n\n{shift}" if shift else "")
        + "\n\n"
        + md_table(
            ["parameter", "action", "old", "new", "reason"],
            [[c.name, c.action, _range_text(c.old), _range_text(c.new), c.reason] for c in report.changes],
        )
    )
    return Section("narrowing", "4. Narrowing", body, markdown)


def _facts_table(stage: SearchStageResult, numbers: Numbers) -> str:
    best = stage.best
    facts: dict[str, tuple[str, Scalar]] = {
        "sampler": ("sampler", stage.sampler),
        "pruner": ("pruner", stage.pruner),
        "epochs": ("epochs per trial", stage.epochs),
        "n_train_rows": ("training rows per trial", stage.n_train_rows),
        "n_trials": ("trials", len(stage.trials)),
        "complete": ("completed", stage.counts.get("COMPLETE", 0)),
        "pruned": ("pruned", stage.counts.get("PRUNED", 0)),
        "fail": ("failed", stage.counts.get("FAIL", 0)),
        "best_number": ("best trial", best.number if best else None),
        "best_value": (f"best {stage.objective} ({stage.direction})", best.value if best else None),
        "seconds": ("wall time (s)", round(stage.seconds, 1)),
    }
    return html_table(["", "value"], key_value_rows(numbers, stage.stage, facts))


def _top(stage: SearchStageResult, k: int) -> list[TrialRecord]:
    return top_trials(stage.trials, stage.direction, k)


def _shown_params(stage: SearchStageResult) -> list[str]:
    """The table columns: the main built-in hyperparameters, then the model's own (`params.<name>`)."""
    return [*_SHOWN_PARAMS, *(f"params.{name}" for name in sorted(stage.space.params))]


def _top_table(stage: SearchStageResult, numbers: Numbers) -> str:
    rows = []
    shown = _shown_params(stage)
    for rank, trial in enumerate(_top(stage, TOP_ROWS), start=1):
        hp = flat_hyperparams(trial.hyperparams)
        rows.append(
            [
                str(rank),
                numbers.span(f"{stage.stage}.top.{rank}.number", trial.number),
                numbers.span(f"{stage.stage}.top.{rank}.value", trial.value),
                esc(trial.diagnosis or ""),
                *(esc(_short(hp.get(name, ""))) for name in shown),
            ]
        )
    header = ["rank", "trial", stage.objective, "diagnosis", *shown]
    return f"<h3>best {len(rows)} of {len(stage.trials)} trials</h3>" + html_table(header, rows)


def _best_curves(stage: SearchStageResult, client: MlflowClient) -> str:
    curves = []
    for trial in _top(stage, BEST_CURVES):
        history = trial_history(client, trial.mlflow_run_id) if trial.mlflow_run_id else []
        if history:
            curves.append((f"#{trial.number}", history))
    if not curves:
        return paragraph("No learning curves: no completed trial has per-epoch metrics in MLflow.")
    return f"<h3>learning curves of the best {len(curves)} trials</h3>" + svg_image(
        best_curves_svg(curves), f"learning curves of the best {stage.stage} trials"
    )


def _param_scatters(stage: SearchStageResult, ringed: set[int]) -> list[str]:
    scored = [t for t in stage.trials if t.value is not None and math.isfinite(t.value)]
    images = []
    for name in _plotted_params(stage.trials):
        points = [(_param_value(t, name), float(t.value or 0.0), t.state) for t in scored]
        points = [p for p in points if p[0] is not None]
        if not points:
            continue
        highlight = [(_param_value(t, name), float(t.value or 0.0), t.number) for t in scored if t.number in ringed]
        log = _is_log(stage, name)
        svg = param_scatter_svg(name, points, highlight, log, stage.objective)
        alt = f"{stage.objective} against {name}" + (" (log scale)" if log else "")
        images.append(svg_image(svg, alt, css_class="small"))
    return images


def _plotted_params(trials: Sequence[TrialRecord]) -> list[str]:
    # The per-optimizer learning rates (learning_rate_adam, ...) are one hyperparameter on one axis.
    names = {"learning_rate" if n.startswith("learning_rate") else n for t in trials for n in t.params}
    return sorted(names)


def _param_value(trial: TrialRecord, name: str) -> object:
    if name == "learning_rate":
        return trial.hyperparams.learning_rate if any(n.startswith("learning_rate") for n in trial.params) else None
    return trial.params.get(name)


def _is_log(stage: SearchStageResult, name: str) -> bool:
    if name == "learning_rate":
        return any(p.scale == "log" for p in stage.space.learning_rate.values())
    param = stage.space.params.get(name.removeprefix("params.")) if name.startswith("params.") else None
    param = param if param is not None else getattr(stage.space, name, None)
    return param is not None and not isinstance(param, CategoricalParam) and param.scale == "log"


def _range_text(param: Param) -> str:
    if isinstance(param, CategoricalParam):
        return "{" + ", ".join(map(str, param.choices)) + "}"
    return f"[{_short(param.low)}, {_short(param.high)}] {param.scale}"


def _new_range_html(name: str, param: Param, numbers: Numbers) -> str:
    if isinstance(param, CategoricalParam):
        return numbers.span(f"narrowing.{name}.choices", _range_text(param))
    low = numbers.span(f"narrowing.{name}.low", param.low)
    high = numbers.span(f"narrowing.{name}.high", param.high)
    return f"[{low}, {high}] {esc(param.scale)}"


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _stage_markdown(stage: SearchStageResult, numbers: Numbers) -> str:
    prefix = stage.stage
    line = (
        f"{numbers.text(prefix + '.n_trials')} trials ({numbers.text(prefix + '.complete')} completed, "
        f"{numbers.text(prefix + '.pruned')} pruned, {numbers.text(prefix + '.fail')} failed), "
        f"{stage.sampler} sampler, {stage.epochs} epochs each. "
    )
    if stage.best is None:
        return line + "No trial completed."
    best = stage.best
    line += f"Best: trial {best.number}, {stage.objective} {numbers.text(prefix + '.best_value')}.\n\n"
    params = flat_hyperparams(best.hyperparams)
    shown = _shown_params(stage)
    return line + md_table(shown, [[_short(params.get(n, "")) for n in shown]])


def _not_run(section_id: str, title: str) -> Section:
    text = "This stage did not run (the pipeline stopped earlier: see the diagnosis section)."
    return Section(section_id, title, paragraph(text), text)
