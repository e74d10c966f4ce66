"""A plain convolutional network for small images (8x8 digits up to a few hundred pixels)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import nn

from modelfoundry.compress.prune import Plan, chain_plan, shrink
from modelfoundry.errors import UserError


def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


AUTO = "auto"  # depth left to the image size (the cnn recipe's)
AUTO_SIDE = 8  # depth "auto": stages until the last one's map is at most this many pixels a side
AUTO_DEPTHS = (2, 4)  # ... within these
MAX_CHANNELS = 4096  # the last stage's channels (width x 2^(depth-1)); more is a typo, not a model: depth 30
# at width 32 asked for 32 x 2^29 channels and was killed for memory before it could say so


def auto_depth(side: int) -> int:
    """The stages for images `side` pixels on their shorter side: each stage after the first halves the
    map, and one whose map is still larger than AUTO_SIDE sees too little of the image. 8x8 digits: 2
    (as before); 28x28 MNIST and Fashion-MNIST: 3; 32x32: 3; 64x64 and larger: 4."""
    depth = AUTO_DEPTHS[0]
    while depth < AUTO_DEPTHS[1] and side / 2 ** (depth - 1) > AUTO_SIDE:
        depth += 1
    return depth


def build_cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    width: int = 32,
    depth: int | Literal["auto"] = 2,
    dropout: float = 0.2,
) -> nn.Module:
    """`depth` stages of two 3x3 conv-BN-ReLU layers, width doubling and 2x max-pooling between
    stages while the image is larger than 2x2, then global average pooling and a linear head.

    Args:
        input_shape: (C, H, W) of one image.
        num_classes: output logits (B, num_classes).
        width: channels of the first stage.
        depth: number of stages; "auto" (the cnn recipe): from the image size (`auto_depth`).
        dropout: dropout before the linear head.
    """
    channels, height, wide = input_shape
    chosen = depth == AUTO
    if chosen:
        depth = auto_depth(min(height, wide))
    if width > MAX_CHANNELS:
        raise UserError(f"model.width: {width} channels in the first stage; at most {MAX_CHANNELS:,}.")
    if width * 2 ** (depth - 1) > MAX_CHANNELS:
        most = (MAX_CHANNELS // width).bit_length()
        raise UserError(
            f"model.depth: {depth} stages of width {width} would end with {width} x 2^{depth - 1} channels "
            f"(each stage doubles them); at most {MAX_CHANNELS:,}. Use model.depth {most} or less, or "
            "leave it out (the recipe's auto picks 2-4 from the image size)."
        )
    layers: list[nn.Module] = []
    for stage in range(depth):
        out = width * 2**stage
        layers += conv_bn_relu(channels, out) + conv_bn_relu(out, out)
        channels = out
        if stage < depth - 1 and height > 2:
            layers.append(nn.MaxPool2d(2))
            height //= 2
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes)]
    model = nn.Sequential(*layers)
    if chosen:  # the package keeps the depth chosen; the run says it (builder.build: `choices`)
        model.resolved_options = {"depth": depth}
        size = f"{input_shape[1]}x{input_shape[2]}"
        model.choices = [
            f'cnn depth {depth}: for {size} images (the cnn recipe\'s "auto", by the image size)'
        ]
    return model


def prune_cnn(
    model: nn.Module, options: dict, ratio: float, build: Callable[..., nn.Module]
) -> tuple[nn.Module, dict, Plan]:
    """Channels: a conv's output channels, its BatchNorm and the next conv's input channels go together;
    `width` sets every stage's channels, so each stage keeps the same fraction."""
    changes = {"width": shrink(options["width"], ratio)}
    return build(**changes), changes, chain_plan(model)
