"""Two towers for recommendation (Yi et al. 2019): a user tower and an item tower, each an MLP over the
id's embedding and the side features of `data.users` / `data.items`; a score is the dot product of the
two (L2-normalised, over a temperature). Trained with in-batch negatives: each user's positive is the
target among every positive item of the batch.

The side features are kept in the model as buffers (user_side (U, Fu), item_side (I, Fi)), so a package
scores users and items without the side tables; `read_data` fills them from the prepared data.
Inputs as mf: (B, 2) user and positive item in training, (B, 1) users to rank every item for.
"""

from __future__ import annotations

import torch
from torch import nn

TEMPERATURE = 0.1


def _tower(width: int, dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, dim))


class TwoTower(nn.Module):
    def __init__(
        self, num_users: int, num_items: int, user_width: int, item_width: int, dim: int, hidden: int
    ):
        super().__init__()
        self.user_id = nn.Embedding(num_users, dim)
        self.item_id = nn.Embedding(num_items, dim)
        nn.init.normal_(self.user_id.weight, std=0.1)
        nn.init.normal_(self.item_id.weight, std=0.1)
        self.register_buffer("user_side", torch.zeros(num_users, user_width))
        self.register_buffer("item_side", torch.zeros(num_items, item_width))
        self.user_tower = _tower(dim + user_width, dim, hidden)
        self.item_tower = _tower(dim + item_width, dim, hidden)

    def read_data(self, data) -> None:
        """Copy the side features the task prepared (data.train.side) into the buffers."""
        side = getattr(data.train, "side", {})
        for name in ("user_side", "item_side"):
            if name in side:
                getattr(self, name).copy_(torch.as_tensor(side[name], dtype=torch.float32))

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """(B,) user indices -> (B, dim), unit length."""
        x = torch.cat([self.user_id(users), self.user_side[users]], 1)
        return nn.functional.normalize(self.user_tower(x), dim=1)

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """(n,) item indices (None: every item) -> (n, dim), unit length."""
        if items is None:
            x = torch.cat([self.item_id.weight, self.item_side], 1)
        else:
            x = torch.cat([self.item_id(items), self.item_side[items]], 1)
        return nn.functional.normalize(self.item_tower(x), dim=1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        u = self.user_vectors(inputs[:, 0])  # (B, d)
        if inputs.shape[1] == 1:  # rank every item: (B, I)
            return u @ self.item_vectors().T / TEMPERATURE
        if self.training:  # in-batch negatives: (B, B), each row rotated so its own positive comes first
            logits = u @ self.item_vectors(inputs[:, 1]).T / TEMPERATURE
            n = len(inputs)
            rotate = (
                torch.arange(n, device=inputs.device)[:, None] + torch.arange(n, device=inputs.device)
            ) % n
            return logits.gather(1, rotate)
        items = inputs[:, 1:]
        v = self.item_vectors(items.reshape(-1)).reshape(*items.shape, -1)  # (B, n, d)
        return (u[:, None, :] * v).sum(-1) / TEMPERATURE


def build_two_tower(input_shape: tuple, num_classes: int, dim: int = 64, hidden: int = 128) -> nn.Module:
    """input_shape: (number of users, user side features, item side features); num_classes: the number
    of items. `dim`: the length of the user and item vectors; `hidden`: each tower's hidden layer."""
    users, user_width, item_width = (*input_shape, 0, 0)[:3]
    return TwoTower(int(users), num_classes, int(user_width), int(item_width), dim, hidden)
