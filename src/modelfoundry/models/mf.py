"""Matrix factorisation for recommendation: a user vector and an item vector (plus an item bias) per id;
a user's score for an item is their dot product (Koren et al. 2009), trained on implicit positives.

Training inputs are (user, positive item) pairs (B, 2); in training mode the model draws `negatives`
items uniformly for each pair (from the global RNG the training loop seeds per epoch) and returns the
scores (B, 1 + negatives), the positive first. The task's objective reads one negative as BPR
(Rendle et al. 2009), several as a sampled softmax; negatives 0 scores every item (a full softmax).
Ranking inputs are user indices (B, 1): the scores
of every item (B, I), one matrix product.
"""

from __future__ import annotations

import torch
from torch import nn


class MatrixFactorization(nn.Module):
    def __init__(self, num_users: int, num_items: int, dim: int, negatives: int):
        super().__init__()
        self.num_items, self.negatives = num_items, negatives
        self.user = nn.Embedding(num_users, dim)
        self.item = nn.Embedding(num_items, dim)
        self.item_bias = nn.Embedding(num_items, 1)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)
        nn.init.zeros_(self.item_bias.weight)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """(B,) user indices -> (B, dim)."""
        return self.user(users)

    def item_vectors(self) -> torch.Tensor:
        """(I, dim): every item's vector (what similar items are found by)."""
        return self.item.weight

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        users = inputs[:, 0]
        u = self.user(users)  # (B, d)
        if inputs.shape[1] == 1:  # rank every item: (B, I)
            return u @ self.item.weight.T + self.item_bias.weight.T
        items = inputs[:, 1:]  # (B, n)
        if self.training and self.negatives == 0:  # softmax over every item: (B, 1 + I), the positive first
            scores = u @ self.item.weight.T + self.item_bias.weight.T
            positive = scores.gather(1, items[:, :1])
            return torch.cat([positive, scores.scatter(1, items[:, :1], -torch.inf)], 1)
        if self.training:  # (B, 1 + negatives): the positive, then items drawn uniformly
            drawn = torch.randint(0, self.num_items, (len(inputs), self.negatives), device=inputs.device)
            items = torch.cat([items[:, :1], drawn], 1)
        return (u[:, None, :] * self.item(items)).sum(-1) + self.item_bias(items).squeeze(-1)


def build_mf(input_shape: tuple, num_classes: int, dim: int = 64, negatives: int = 1) -> nn.Module:
    """input_shape: (number of users,); num_classes: the number of items. `dim`: the length of each
    vector; `negatives`: items drawn per positive (1: BPR; more: sampled softmax; 0: a softmax over every
    item, exact and fast while the items are few thousand)."""
    if negatives < 0:
        raise ValueError("negatives must be 1 (BPR), more (sampled softmax) or 0 (softmax over every item)")
    return MatrixFactorization(int(input_shape[0]), num_classes, dim, negatives)
