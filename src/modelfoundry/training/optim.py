"""Optimizers, learning-rate schedules with warm-up, penalties and precision, from the train config."""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path

import torch
from torch import nn

from modelfoundry.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay (L2) applies to weight matrices and kernels only, never to biases or norm scales.

    With `lr_head`, the model's `head` (its classification layer) learns at that rate and the rest
    (a pretrained encoder) at `lr`: a fresh head needs far larger steps than weights already trained.
    """
    head = getattr(model, "head", None) if cfg.lr_head else None
    if cfg.lr_head and not isinstance(head, nn.Module):
        from modelfoundry.errors import UserError

        raise UserError(
            f"train.lr_head: {type(model).__name__} has no separate classification head; only the "
            "text models (pretrained, lstm, gru, transformer) do. Remove train.lr_head."
        )
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    # With `lr_backbone`, a pretrained image model's `backbone` learns at that rate (discriminative rates)
    backbone = getattr(model, "backbone", None) if cfg.lr_backbone else None
    if cfg.lr_backbone and not isinstance(backbone, nn.Module):
        from modelfoundry.errors import UserError

        raise UserError(
            f"train.lr_backbone: {type(model).__name__} has no pretrained backbone; only pretrained image "
            "models do. Remove train.lr_backbone."
        )
    backbone_ids = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    groups = []
    for params, lr in (
        ([p for p in model.parameters() if id(p) not in head_ids | backbone_ids], cfg.lr),
        ([p for p in model.parameters() if id(p) in backbone_ids], cfg.lr_backbone),
        ([p for p in model.parameters() if id(p) in head_ids], cfg.lr_head),
    ):
        trainable = [p for p in params if p.requires_grad]
        groups += [
            {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": cfg.weight_decay, "lr": lr},
            {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0, "lr": lr},
        ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":
        # Adam's weight_decay is the classic L2 penalty added to the gradient; AdamW decouples it.
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(step: int, cfg: TrainConfig, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at optimizer step `step`: linear warm-up, then the schedule."""
    warmup_steps = int(cfg.warmup * total_steps)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if cfg.schedule == "step":
        return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if cfg.schedule == "linear":  # the BERT fine-tuning recipe: warm up, then straight down to 0
        return 1.0 - progress
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """A scheduler stepped once per optimizer step."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        # Smith & Topin 2018: warm up to lr then anneal far below it, cycling momentum the other way.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total,
            pct_start=cfg.warmup or 0.3,
            cycle_momentum=cfg.optimizer in ("sgd", "adam", "adamw"),
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg, total, steps_per_epoch)
    )


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of absolute weights (matrices and kernels only, as for weight decay)."""
    return sum(p.abs().sum() for p in model.parameters() if p.requires_grad and p.ndim >= 2)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from modelfoundry.errors import UserError

        raise UserError(
            "train.device: 'cuda' but no CUDA GPU is visible to PyTorch. Use device: auto or cpu."
        )
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. `auto` picks a half type only where it is really faster."""
    if name == "fp32":
        return None
    if name in ("bf16", "fp16"):
        return torch.bfloat16 if name == "bf16" else torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_bf16_faster() else None


@functools.cache
def _cpu_bf16_faster(size: int = 256) -> bool:
    """bf16 on a CPU only with native bf16 instructions (AMX / AVX512-BF16) and when it measures
    clearly faster: without them matmul is emulated, about 100x slower than fp32 on this project's
    machines. The flag check comes first because a timing alone is noisy on a busy machine."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    if not ({"amx_bf16", "avx512_bf16"} & set(flags.split())):
        return False
    a = torch.randn(size, size)
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = a.to(dtype)
        x @ x
        best[dtype] = min(_timed(lambda m=x: m @ m) for _ in range(5))
    return best[torch.bfloat16] * 1.5 < best[torch.float32]


def _timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start
