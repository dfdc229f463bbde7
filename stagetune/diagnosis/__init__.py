"""Reading learning curves: one run's (curves), the noise a difference must clear (noise), a stage's verdict
from its best trials (stage). The names other modules use are re-exported here."""

from stagetune.diagnosis.curves import (
    ALL_CODES,
    DEFAULT_SETTINGS,
    NEXT_ACTIONS,
    PROBLEMS,
    SHORT_RUN_ACTION,
    SOURCE_COLLAPSED,
    SOURCE_DIVERGED,
    SOURCE_NONE,
    SOURCE_NOT_CONVERGED,
    SOURCE_OVERFITTING,
    SOURCE_UNDERFITTING,
    diagnose_curves,
)
from stagetune.diagnosis.stage import contradiction, summarise_diagnoses, summarise_stage, verdict_of

__all__ = [
    "ALL_CODES",
    "DEFAULT_SETTINGS",
    "NEXT_ACTIONS",
    "PROBLEMS",
    "SHORT_RUN_ACTION",
    "SOURCE_COLLAPSED",
    "SOURCE_DIVERGED",
    "SOURCE_NONE",
    "SOURCE_NOT_CONVERGED",
    "SOURCE_OVERFITTING",
    "SOURCE_UNDERFITTING",
    "contradiction",
    "diagnose_curves",
    "summarise_diagnoses",
    "summarise_stage",
    "verdict_of",
]
