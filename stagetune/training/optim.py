"""The optimizer named by HyperParams."""

from collections.abc import Iterable

import torch

from schemas.hyperparams import HyperParams


def build_optimizer(hp: HyperParams, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum hp.momentum, no Nesterov) at hp.learning_rate with hp.weight_decay.

    Adam and SGD apply weight decay as an L2 term in the gradient; AdamW decouples it.
    """
    if hp.optimizer == "adam":
        return torch.optim.Adam(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
    if hp.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
    if hp.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=hp.learning_rate, momentum=hp.momentum, weight_decay=hp.weight_decay, nesterov=False
        )
    raise ValueError(f"unknown optimizer {hp.optimizer!r}")
