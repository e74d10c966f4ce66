"""The popularity baseline of recommendation: every user gets the items most interacted with in
training. It learns by counting (`fit_popularity`, no gradient), and every recommendation report
shows it beside the model, since a model that does not beat it has learnt nothing personal.
"""

from __future__ import annotations

import torch
from torch import nn

from modelfoundry.training.loop import FitResult


class Popularity(nn.Module):
    def __init__(self, num_items: int):
        super().__init__()
        # a Parameter (not a buffer) so the package and the device logic treat it as the model's weights
        self.counts = nn.Parameter(torch.zeros(num_items), requires_grad=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.shape[1] == 1:  # (B, 1) users -> (B, I): the same scores for everyone
            return self.counts.expand(len(inputs), -1)
        return self.counts[inputs[:, 1:]]

    def item_vectors(self) -> torch.Tensor:
        return self.counts[:, None]


def build_popularity(input_shape: tuple, num_classes: int) -> nn.Module:
    """input_shape: (number of users,); num_classes: the number of items."""
    return Popularity(num_classes)


def fit_popularity(model: Popularity, train, val, cfg, **_) -> FitResult:
    """Count each item's training interactions; `train` holds (user, item) pairs as `inputs` (N, 2)."""
    counts = torch.bincount(train.inputs[:, 1].cpu(), minlength=model.counts.numel()).float()
    model.counts.data.copy_(counts)
    return FitResult(history=[], best_epoch=0, stopped_early=False, precision="fp32")
