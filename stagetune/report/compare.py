"""Two pipeline runs side by side: config diff, best parameters, test metrics, and which stage moved most."""

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas.config import TASK_CHAMPION_METRICS
from schemas.pipeline import PipelineResult, SearchStageResult
from schemas.stages import SEARCH_STAGES, Stage
from stagetune.flat_keys import flat_hyperparams, flatten
from stagetune.report.markup import esc, format_value, html_page, html_table, paragraph
from stagetune.secret_masking import mask_data


@dataclass(frozen=True)
class StageMove:
    """One stage's headline number in both runs and how far it moved (relative to run A)."""

    stage: str
    metric: str
    a: float | None
    b: float | None
    higher_is_better: bool

    @property
    def relative(self) -> float | None:
        """(B - A) / |A|, or None when either is missing or A is 0."""
        if self.a is None or self.b is None or not self.a or not math.isfinite(self.a) or not math.isfinite(self.b):
            return None
        return (self.b - self.a) / abs(self.a)

    @property
    def verdict(self) -> str:
        """'better', 'worse' or 'same' for run B against run A."""
        if self.relative is None or self.relative == 0:
            return "same" if self.relative == 0 else "n/a"
        return "better" if (self.relative > 0) == self.higher_is_better else "worse"


@dataclass(frozen=True)
class Comparison:
    """Everything `stagetune compare` shows."""

    run_a: str
    run_b: str
    config_diff: list[tuple[str, str, str]]
    best_params: list[tuple[str, str, str]]
    test_metrics: list[tuple[str, float | None, float | None]]
    moves: list[StageMove]
    verdict: list[str]


def compare_results(
    a: PipelineResult, b: PipelineResult, config_a: Mapping[str, Any] | None, config_b: Mapping[str, Any] | None
) -> Comparison:
    """Compare run B against run A."""
    flat_a = flatten(mask_data(dict(config_a or {})))
    flat_b = flatten(mask_data(dict(config_b or {})))
    diff = [
        (key, _text(flat_a.get(key)), _text(flat_b.get(key)))
        for key in sorted(set(flat_a) | set(flat_b))
        if flat_a.get(key) != flat_b.get(key)
    ]
    hp_a = flat_hyperparams(a.best_hyperparams) if a.best_hyperparams else {}
    hp_b = flat_hyperparams(b.best_hyperparams) if b.best_hyperparams else {}
    params = [(k, _text(hp_a.get(k)), _text(hp_b.get(k))) for k in sorted(set(hp_a) | set(hp_b))]
    metrics = [
        (k, a.test_metrics.get(k), b.test_metrics.get(k)) for k in sorted(set(a.test_metrics) | set(b.test_metrics))
    ]
    moves = _moves(a, b)
    return Comparison(
        a.mlflow_parent_run_id, b.mlflow_parent_run_id, diff, params, metrics, moves, _verdict(a, b, diff, moves)
    )


def _moves(a: PipelineResult, b: PipelineResult) -> list[StageMove]:
    moves = []
    for stage in SEARCH_STAGES:
        sa, sb = getattr(a, stage), getattr(b, stage)
        if sa is not None and sb is not None and sa.objective == sb.objective:
            maximize = sa.direction == "maximize"
            moves.append(StageMove(stage, f"best {sa.objective}", _best(sa), _best(sb), maximize))
    metric = a.final.registry.metric_name if a.final is not None and a.final.registry is not None else "accuracy"
    higher = metric not in TASK_CHAMPION_METRICS["regression"] or not TASK_CHAMPION_METRICS["regression"][metric]
    a_value, b_value = a.test_metrics.get(metric), b.test_metrics.get(metric)
    moves.append(StageMove(Stage.FINAL, f"test {metric}", a_value, b_value, higher))
    return moves


def _verdict(
    a: PipelineResult, b: PipelineResult, diff: list[tuple[str, str, str]], moves: list[StageMove]
) -> list[str]:
    lines = []
    if a.sample.fingerprint != b.sample.fingerprint:
        lines.append("The data differ (fingerprints): every later stage saw different rows.")
    elif a.sample.sampled_fingerprint != b.sample.sampled_fingerprint:
        lines.append("Same data, but a different sample was tuned on (sampled fingerprints differ).")
    sections = sorted({key.split(".", 1)[0] for key, _, _ in diff})
    lines.append(f"Config differs in: {', '.join(sections)}." if sections else "Same config.")
    ranked = sorted((m for m in moves if m.relative is not None), key=lambda m: -abs(m.relative or 0.0))
    if ranked:
        top = ranked[0]
        lines.append(
            f"Moved most: {top.stage} ({top.metric} {format_value(top.a)} -> {format_value(top.b)}, "
            f"{top.relative:+.1%}, {top.verdict} in B)."
        )
    if a.status != b.status:
        lines.append(f"Status: A {a.status}, B {b.status}.")
    return lines


def comparison_html(c: Comparison) -> str:
    """The comparison as a self-contained HTML page."""
    moves = [
        [
            esc(m.stage),
            esc(m.metric),
            esc(format_value(m.a)),
            esc(format_value(m.b)),
            esc(_percent(m.relative)),
            esc(m.verdict),
        ]
        for m in c.moves
    ]
    sections = [
        ("verdict", "Which stage made the difference", "".join(paragraph(line) for line in c.verdict)),
        ("stages", "Stage by stage", html_table(["stage", "number", "A", "B", "B vs A", "B is"], moves)),
        (
            "metrics",
            "Test metrics",
            html_table(["metric", "A", "B", "B - A"], [_metric_row(*m) for m in c.test_metrics]),
        ),
        ("params", "Best hyperparameters", html_table(["parameter", "A", "B"], [_row(*p) for p in c.best_params])),
        (
            "config",
            "Config diff (dotted keys that differ)",
            html_table(["key", "A", "B"], [_row(*d) for d in c.config_diff]),
        ),
    ]
    header = f"<h1>stagetune compare</h1><p>A = <code>{esc(c.run_a)}</code>, B = <code>{esc(c.run_b)}</code></p>"
    return html_page(f"stagetune compare {c.run_a} {c.run_b}", header, sections)


def metric_delta(a: float | None, b: float | None) -> float | None:
    """B - A, or None when either is missing."""
    return None if a is None or b is None else b - a


def _metric_row(name: str, a: float | None, b: float | None) -> list[str]:
    return [esc(name), esc(format_value(a)), esc(format_value(b)), esc(format_value(metric_delta(a, b)))]


def _row(key: str, a: str, b: str) -> list[str]:
    return [esc(key), esc(a), esc(b)]


def _best(stage: SearchStageResult) -> float | None:
    return stage.best.value if stage.best is not None else None


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"
