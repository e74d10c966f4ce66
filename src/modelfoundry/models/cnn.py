"""A plain convolutional network for small images (8x8 digits up to a few hundred pixels)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from modelfoundry.compress.prune import Plan, chain_plan, shrink


def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def build_cnn(
    input_shape: tuple[int, ...], num_classes: int, width: int = 32, depth: int = 2, dropout: float = 0.2
) -> nn.Module:
    """`depth` stages of two 3x3 conv-BN-ReLU layers, width doubling and 2x max-pooling between
    stages while the image is larger than 2x2, then global average pooling and a linear head.

    Args:
        input_shape: (C, H, W) of one image.
        num_classes: output logits (B, num_classes).
        width: channels of the first stage.
        depth: number of stages.
        dropout: dropout before the linear head.
    """
    channels, height, _ = input_shape
    layers: list[nn.Module] = []
    for stage in range(depth):
        out = width * 2**stage
        layers += conv_bn_relu(channels, out) + conv_bn_relu(out, out)
        channels = out
        if stage < depth - 1 and height > 2:
            layers.append(nn.MaxPool2d(2))
            height //= 2
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


def prune_cnn(
    model: nn.Module, options: dict, ratio: float, build: Callable[..., nn.Module]
) -> tuple[nn.Module, dict, Plan]:
    """Channels: a conv's output channels, its BatchNorm and the next conv's input channels go together;
    `width` sets every stage's channels, so each stage keeps the same fraction."""
    changes = {"width": shrink(options["width"], ratio)}
    return build(**changes), changes, chain_plan(model)
