"""The final model as the mean of several networks trained from different seeds.

Averaging a few independently trained networks lowers the variance of the predictions, which on small or
noisy tables moves the test score more than the search's last refinements do (bench/README.md, "The final
ensemble"). The members share one architecture and hyperparameters; only their seeds differ.

A classifier ensemble returns the log of the members' mean class probabilities: a softmax of it gives
the mean probabilities back, its argmax is the ensemble's vote weighted by confidence, and a
cross-entropy on it is the ensemble's negative log-likelihood. So every caller that treats a network's
outputs as logits (evaluation, the served model's `proba`) reads an ensemble correctly. A regressor
ensemble returns the mean of the members' outputs.
"""

from collections.abc import Sequence

import torch
from torch import nn

_MIN_PROBABILITY = 1e-12
"""Floor under the mean probability before its log: a class every member rules out gets a large, finite
negative output instead of -inf, which would turn a cross-entropy into NaN."""


class MeanEnsemble(nn.Module):
    """The mean of `members`' predictions: class probabilities (returned as their log) or regression outputs."""

    def __init__(self, members: Sequence[nn.Module], classifier: bool) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.classifier = classifier

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([member(inputs).float() for member in self.members])
        if not self.classifier:
            return outputs.mean(dim=0)
        probabilities = outputs.softmax(dim=-1).mean(dim=0)
        return probabilities.clamp_min(_MIN_PROBABILITY).log()


def ensemble_of(members: Sequence[nn.Module], classifier: bool) -> nn.Module:
    """One member as itself (its checkpoint and outputs stay those of a single network), several as their mean."""
    if len(members) == 1:
        return members[0]
    return MeanEnsemble(members, classifier)
