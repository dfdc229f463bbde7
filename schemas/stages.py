"""The pipeline's stage names: one enum, whose values are what run folders, MLflow tags and reports hold."""

from enum import StrEnum
from typing import Literal


class Stage(StrEnum):
    """A stage of the pipeline, in the order they run. A `str`: `Stage.COARSE == "coarse"`.

    The values are a contract: they name the stored results of a run folder (`results/coarse.json`,
    `state.json`'s stages_done), the `stagetune.stage` tag of MLflow stage runs, and report
    sections. Renaming one would orphan every existing run (resume, reports, `stagetune worker`).
    """

    SAMPLE = "sample"
    SANITY = "sanity"
    COARSE = "coarse"
    REFINE = "refine"
    FINAL = "final"


SearchStage = Literal[Stage.COARSE, Stage.REFINE]
"""The two stages that run an Optuna study."""
SEARCH_STAGES: tuple[SearchStage, ...] = (Stage.COARSE, Stage.REFINE)
