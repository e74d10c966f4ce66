"""ResNet with basic blocks (He et al. 2016), sized for small images: a 3x3 stem, no max-pool."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from modelfoundry.compress.prune import Plan, norm_plan, shrink


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; a 1x1 conv matches shapes when they change."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C', H/s, W/s)
        return torch.relu(self.body(x) + self.shortcut(x))


def build_resnet(
    input_shape: tuple[int, ...],
    num_classes: int,
    width: int = 16,
    depth: int = 3,
    blocks_per_stage: int = 2,
    dropout: float = 0.0,
) -> nn.Module:
    """Stem -> `depth` stages of `blocks_per_stage` basic blocks (width doubling, stride 2 from the
    second stage while the image is larger than 2x2) -> global average pool -> linear head.

    depth=3, blocks_per_stage=3 is the ResNet-20 of the paper's CIFAR experiments.
    """
    channels, height, _ = input_shape
    layers: list[nn.Module] = [
        nn.Conv2d(channels, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    ]
    c_in = width
    for stage in range(depth):
        c_out = width * 2**stage
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 and height > 2 else 1
            height //= stride
            layers.append(BasicBlock(c_in, c_out, stride))
            c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


def prune_resnet(
    model: nn.Module, options: dict, ratio: float, build: Callable[..., nn.Module]
) -> tuple[nn.Module, dict, Plan]:
    """Channels. Those of a stage's residual stream are added together by every block of the stage, so
    the stem, the blocks' second convs, the 1x1 shortcuts and all their readers share one keep-set."""
    stream = ("stem",)  # children 0 and 1 are the stem's conv and BatchNorm; stage 0 adds into its output
    plan: Plan = {"0.weight": (stream, ()), **norm_plan("1", stream)}
    for name, module in model.named_children():
        if isinstance(module, BasicBlock):
            inner, out = (f"{name}.body",), stream
            if isinstance(module.shortcut, nn.Sequential):  # a 1x1 conv starts the next stage's stream
                out = (f"{name}.shortcut",)
                plan |= {f"{name}.shortcut.0.weight": (out, stream), **norm_plan(f"{name}.shortcut.1", out)}
            plan |= {
                f"{name}.body.0.weight": (inner, stream),
                **norm_plan(f"{name}.body.1", inner),
                f"{name}.body.3.weight": (out, inner),
                **norm_plan(f"{name}.body.4", out),
            }
            stream = out
        elif isinstance(module, nn.Linear):
            plan |= {f"{name}.weight": ((), stream)}
    changes = {"width": shrink(options["width"], ratio)}
    return build(**changes), changes, plan
