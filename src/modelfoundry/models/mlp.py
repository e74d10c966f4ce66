"""Multi-layer perceptron: the default for tables, and a baseline for small images."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from modelfoundry.compress.prune import Plan, chain_plan, shrink


def build_mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: list[int] = (128, 64),
    dropout: float = 0.1,
    batch_norm: bool = True,
) -> nn.Module:
    """Flatten -> [Linear -> BatchNorm -> ReLU -> Dropout] per hidden size -> Linear.

    Args:
        input_shape: shape of one example, e.g. (F,) or (C, H, W); flattened first.
        num_classes: width of the output logits (B, num_classes).
        hidden: width of each hidden layer.
        dropout: dropout after each hidden layer.
        batch_norm: batch normalisation after each hidden linear layer.
    """
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for size in hidden:
        layers += [
            nn.Linear(width, size),
            nn.BatchNorm1d(size) if batch_norm else nn.Identity(),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        ]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def prune_mlp(
    model: nn.Module, options: dict, ratio: float, build: Callable[..., nn.Module]
) -> tuple[nn.Module, dict, Plan]:
    """Hidden units: a Linear's outputs, its BatchNorm and the next Linear's inputs go together."""
    changes = {"hidden": [shrink(h, ratio) for h in options["hidden"]]}
    return build(**changes), changes, chain_plan(model)
