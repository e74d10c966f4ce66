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


def balance_weights(
    groups: pd.Series, cells: np.ndarray, method: str = "equal_cells"
) -> tuple[np.ndarray, dict]:
    """Per-example weights (N,) whose sum is N, and the count of each (group, cell) pair ("F / yes": 12).
    `cells`: the task's `balance_cells` (the class names, or one cell). equal_cells: every pair present
    weighs the same in total; reweighing: a pair weighs what it would if cells were independent of groups,
    n_group * n_cell / N (Kamiran & Calders 2012)."""
    group, cell = pd.Series(groups.to_numpy().astype(str)), pd.Series(np.asarray(cells).astype(str))
    keys = group + "\x00" + cell
    counts = keys.value_counts()
    in_pair = keys.map(counts).to_numpy(dtype=np.float64)
    if method == "reweighing":
        expected = group.map(group.value_counts()).to_numpy(np.float64) * cell.map(
            cell.value_counts()
        ).to_numpy(np.float64)
        weights = expected / (len(keys) * in_pair)
    else:
        weights = len(keys) / (len(counts) * in_pair)
    shown = {k.replace("\x00", " / "): int(v) for k, v in counts.sort_index().items()}
    return weights.astype(np.float32), shown


class WeightedData:
    """A training split (`ArrayData`) whose batches carry each example's weight: (inputs, targets,
    weights), shuffled exactly as the split's own batches are."""

    def __init__(self, data, weights: np.ndarray | torch.Tensor):
        if not hasattr(data, "inputs"):
            raise UserError(
                "train.balance_groups: re-weighting works on a training split of table rows held in memory; "
                f"this run's is {type(data).__name__}. Remove train.balance_groups (the audit still runs), "
                "or train a table model with data.streaming: false."
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
