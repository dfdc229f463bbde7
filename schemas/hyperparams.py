"""One trial's hyperparameters: everything needed to rebuild its model, optimizer and data feed."""

from typing import Literal

from pydantic import Field

from schemas.base import StrictModel

OptimizerName = Literal["adam", "adamw", "sgd"]
ActivationName = Literal["relu", "leaky_relu", "gelu", "tanh"]
RebalanceStrategy = Literal["none", "oversample", "balanced_batches", "class_weights"]
LossName = Literal["auto", "cross_entropy", "mse", "huber", "l1"]


class HyperParams(StrictModel):
    """A point of the search space, typed. Model and optimizer are built from this alone."""

    optimizer: OptimizerName = "adamw"
    learning_rate: float = Field(default=3e-3, gt=0, le=10)
    weight_decay: float = Field(default=1e-4, ge=0, le=1)
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum (ignored by Adam/AdamW).")
    dropout: float = Field(default=0.0, ge=0, lt=1)
    batch_size: int = Field(default=64, ge=1, le=65536)
    width: int = Field(default=128, ge=1, le=16384, description="Hidden units (MLP) per layer.")
    depth: int = Field(
        default=2, ge=0, le=32, description="Hidden layers (MLP) or conv blocks (CNN); 0: a linear model."
    )
    channels: int = Field(default=32, ge=1, le=4096, description="Filters of the first conv block (CNN).")
    activation: ActivationName = "relu"
    batch_norm: bool = False
    rebalance: RebalanceStrategy = "none"
    loss: LossName = Field(
        default="auto", description="Training loss; auto: training.loss (cross-entropy, or MSE for regression)."
    )
