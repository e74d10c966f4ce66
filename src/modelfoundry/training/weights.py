"""Fairness mitigation by re-weighting (train.balance_groups): each (group, label) cell of the training
split counts equally in the loss, so a group the data holds few of, or whose labels lean one way, weighs
as much as the others (Kamiran & Calders 2012 re-weigh towards independence; this is the simpler
equal-cell form the issue asks for). The weights travel with the batches into `Objective.loss`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from modelfoundry.errors import UserError


def balance_weights(groups: pd.Series, cells: np.ndarray) -> tuple[np.ndarray, dict]:
    """Per-example weights (N,) whose sum is N, equal in total for every (group, cell) pair present, and
    the count of each pair ("F / yes": 12). `cells`: the task's `balance_cells` (the classes, or zeros)."""
    keys = pd.Series(groups.to_numpy().astype(str)) + "\x00" + pd.Series(np.asarray(cells).astype(str))
    counts = keys.value_counts()
    weights = len(keys) / (len(counts) * keys.map(counts).to_numpy(dtype=np.float64))
    shown = {k.replace("\x00", " / "): int(v) for k, v in counts.sort_index().items()}
    return weights.astype(np.float32), shown


class WeightedData:
    """A training split (`ArrayData`) whose batches carry each example's weight: (inputs, targets,
    weights), shuffled exactly as the split's own batches are."""

    def __init__(self, data, weights: np.ndarray | torch.Tensor):
        if not hasattr(data, "inputs"):
            raise UserError(
                "train.balance_groups: re-weighting needs the training rows in memory; set "
                "data.streaming: false."
            )
        self.data, self.weights = data, torch.as_tensor(weights, dtype=torch.float32)
        self.inputs, self.targets = data.inputs, data.targets

    def __len__(self) -> int:
        return len(self.data)

    def to(self, device: torch.device) -> WeightedData:
        return WeightedData(self.data.to(device), self.weights.to(device))

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order.to(self.inputs.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield self.inputs[idx], self.targets[idx], self.weights[idx]
