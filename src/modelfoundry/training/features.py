"""`train.features_only`: a linear probe on a frozen pretrained backbone. Each example's features are
computed once, in eval mode, and the head trains on those: on a CPU the backbone's forward pass is
nearly all the cost of an epoch, so every epoch after the first is almost free.
"""

from __future__ import annotations

import torch
from torch import nn

from modelfoundry.data.prepare import ArrayData
from modelfoundry.errors import UserError


@torch.inference_mode()
def cached_features(model: nn.Module, splits: dict, batch_size: int = 64) -> tuple[nn.Module, dict]:
    """(the model's head, the splits as features (N, F) with their targets). The head shares its
    weights with `model`, so training it trains the model that is packaged.

    Args:
        model: a pretrained image model with `backbone` ((B, C, H, W) -> (B, F)), `dropout` and `head`.
        splits: name -> data with `batches` (or None).
    """
    if not all(isinstance(getattr(model, part, None), nn.Module) for part in ("backbone", "head")):
        raise UserError(
            f"train.features_only: {type(model).__name__} has no pretrained backbone to compute features "
            "with; only pretrained image models do. Remove train.features_only."
        )
    model.eval()
    cached = {}
    for name, data in splits.items():
        if data is not None:
            parts = [(model.backbone(x), y) for x, y in data.batches(batch_size)]
            cached[name] = ArrayData(torch.cat([f for f, _ in parts]), torch.cat([y for _, y in parts]))
    model.freeze(True)
    return nn.Sequential(model.dropout, model.head), cached
