"""The coarse section's account of retuning: which known points were reused, and whether they won again."""

from schemas.hyperparams import HyperParams
from schemas.pipeline import SearchStageResult
from stagetune.report.markup import Numbers, esc, html_table, md_table, paragraph

_SHOWN = ("optimizer", "learning_rate", "weight_decay", "dropout", "batch_size", "width", "depth")


def reuse_block(stage: SearchStageResult, final: HyperParams | None, numbers: Numbers) -> tuple[str, str]:
    """HTML and Markdown: each reused point (source, params, coarse trial, value, rank, final best?)."""
    if not stage.reused:
        text = "Nothing reused: no champion and no finished earlier run of this config (or reuse is switched off)."
        return paragraph(text), text
    header = ["reused point", "source run", "params", "coarse trial", "objective", "rank", "final best"]
    html_rows, md_rows = [], []
    by_number = {record.number: record for record in stage.trials}
    for index, item in enumerate(stage.reused):
        key = f"coarse.reused.{index}"
        record = by_number.get(item.number) if item.number is not None else None
        # The trial as run here (unsampled fields from this config); a warm-started refinement trial of the
        # same point, chosen as the best, trained the same hyperparameters.
        won = final is not None and record is not None and record.hyperparams == final
        trial = str(item.number) if item.number is not None else f"not enqueued: {item.skipped}"
        cells = [
            item.label,
            item.source_run_id,
            _params_text(item.hyperparams),
            trial,
        ]
        html_rows.append(
            [esc(c) for c in cells]
            + [numbers.span(f"{key}.value", item.value), numbers.span(f"{key}.rank", item.rank), esc(_yes(won))]
        )
        md_rows.append([*cells, numbers.text(f"{key}.value"), numbers.text(f"{key}.rank"), _yes(won)])
    complete = stage.counts.get("COMPLETE", 0)
    note = (
        f"Known points enqueued as the first coarse trials (they count toward the budget); rank 1 is the best "
        f"of the {complete} completed coarse trials; final best: the final model was trained with this point."
    )
    html = "<h3>reused from earlier runs</h3>" + paragraph(note) + html_table(header, html_rows)
    return html, f"Reused from earlier runs: {note}\n\n" + md_table(header, md_rows)


def _params_text(hp: HyperParams) -> str:
    values = hp.model_dump()
    return ", ".join(
        f"{name}={values[name]:.3g}" if isinstance(values[name], float) else f"{name}={values[name]}" for name in _SHOWN
    )


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
