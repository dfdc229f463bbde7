"""Contracts between stagetune's stages: pydantic v2 models only (no torch, Prefect, MLflow)."""

from schemas.config import PipelineConfig
from schemas.hyperparams import HyperParams
from schemas.pipeline import PipelineResult
from schemas.results import SampleResult, SanityResult

__all__ = ["HyperParams", "PipelineConfig", "PipelineResult", "SampleResult", "SanityResult"]
