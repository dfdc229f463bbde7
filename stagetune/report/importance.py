"""Parameter importances of a search stage: Optuna's fANOVA on the stored study, else a rank-based estimate.

The study lives in the run's Optuna storage, which may not be reachable from where the report is
made (another machine, a deleted file). Then each parameter's importance is estimated from the
stage result's trials alone: |Spearman correlation| with the objective for numbers, the share of
the objective's variance explained by the groups (eta squared) for choices; normalised to sum to 1.
"""

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from schemas.pipeline import SearchStageResult
from schemas.search import TrialRecord
from schemas.urls import default_storage_url, journal_path
from stagetune.search.study import open_storage
from stagetune.settings import load_settings

MIN_COMPLETE = 3


@dataclass(frozen=True)
class Importances:
    """Importance per parameter (largest first), how it was computed, and why if not by fANOVA."""

    values: dict[str, float]
    method: str


def study_storage(config: Mapping[str, Any] | None) -> str | None:
    """The run's Optuna storage URL if it can be opened without creating anything; else None."""
    if config is None:
        return None
    configured = config.get("search", {}).get("storage") or load_settings().optuna_storage
    url = (
        str(configured)
        if configured
        else default_storage_url(Path(str(config.get("execution", {}).get("workdir", "."))))
    )
    local = journal_path(url) or (Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None)
    if local is not None and not local.is_file():
        return None  # never let Optuna create an empty database or journal
    return url


def stage_importances(stage: SearchStageResult, storage: str | None) -> Importances | None:
    """fANOVA importances from the stored study when reachable, else the rank-based estimate; None if too few trials."""
    complete = [t for t in stage.trials if t.state == "COMPLETE" and _finite(t.value)]
    if len(complete) < MIN_COMPLETE:
        return None
    reason = "the Optuna storage is not known here"
    if storage is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optuna.logging.set_verbosity(optuna.logging.WARNING)
                study = optuna.load_study(study_name=stage.study_name, storage=open_storage(storage))
                values = optuna.importance.get_param_importances(study)
            return Importances(dict(values), "fANOVA (Optuna, on the stored study)")
        except Exception as error:  # unreachable storage, deleted study, degenerate values: fall back
            reason = f"the stored study could not be used ({type(error).__name__}: {str(error)[:120]})"
    values = rank_importances(complete)
    return Importances(values, f"rank correlation / eta squared from the trials ({reason})") if values else None


def rank_importances(trials: Sequence[TrialRecord]) -> dict[str, float]:
    """|Spearman rho| (numbers) or eta squared (choices) of each varied param with the objective, summing to 1."""
    raw: dict[str, float] = {}
    names = sorted({name for t in trials for name in t.params})
    for name in names:
        rows = [(t.params[name], float(t.value or 0.0)) for t in trials if name in t.params]
        values = pd.Series([v for _, v in rows], dtype=float)
        params = [p for p, _ in rows]
        if len(rows) < MIN_COMPLETE or len({repr(p) for p in params}) < 2 or values.nunique() < 2:
            continue
        if all(isinstance(p, int | float) and not isinstance(p, bool) for p in params):
            rho = pd.Series(params, dtype=float).rank().corr(values.rank())
            score = abs(float(rho)) if math.isfinite(rho) else 0.0
        else:
            score = _eta_squared([repr(p) for p in params], values.to_numpy())
        raw[name] = score
    total = sum(raw.values())
    if total <= 0:
        return {}
    return dict(sorted(((k, v / total) for k, v in raw.items()), key=lambda kv: -kv[1]))


def _eta_squared(groups: Sequence[str], values: np.ndarray) -> float:
    mean = float(values.mean())
    total = float(((values - mean) ** 2).sum())
    if total <= 0:
        return 0.0
    between = 0.0
    for group in set(groups):
        members = values[[g == group for g in groups]]
        between += len(members) * (float(members.mean()) - mean) ** 2
    return between / total


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
