"""A small pre-norm transformer encoder for text classification, trained from scratch."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from modelfoundry.compress.prune import Plan, shrink
from modelfoundry.models.rnn import check_text_options

POSITIONS = ("sinusoidal", "learned")
POOLINGS = ("mean", "cls")


def sinusoid_table(length: int, width: int) -> torch.Tensor:
    """Fixed positions of "Attention Is All You Need": (length, width), sin on even and cos on odd
    features."""
    position = torch.arange(length, dtype=torch.float32)[:, None]  # (length, 1)
    frequency = torch.exp(torch.arange(0, width, 2) * (-math.log(10000.0) / width))  # (ceil(width / 2),)
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: width // 2])  # odd widths have one cos fewer
    return table


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """x (B, T, C), attend (B, T) True where a key may be attended to -> (B, T, C)."""
        B, T, C = x.shape
        q, k, v = (
            t.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, T, hs)
            for t in self.qkv(x).split(C, dim=2)
        )
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attend[:, None, None, :],  # pads are never keys
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class Block(nn.Module):
    """Pre-norm encoder block: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, width: int, heads: int, ffn_multiplier: int, dropout: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(width), SelfAttention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, ffn_multiplier * width),
            nn.GELU(),
            nn.Linear(ffn_multiplier * width, width),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attend)
        return x + self.mlp(self.norm2(x))


class TransformerClassifier(nn.Module):
    """Token + position embeddings -> `depth` blocks -> LayerNorm -> mean or [CLS] pooling -> dropout ->
    head."""

    def __init__(
        self,
        max_length: int,
        num_classes: int,
        vocab_size: int,
        pad_id: int,
        width: int,
        depth: int,
        heads: int,
        ffn_multiplier: int,
        positions: str,
        pooling: str,
        dropout: float,
    ):
        super().__init__()
        self.max_length, self.pad_id, self.pooling = max_length, pad_id, pooling
        self.embed = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        # Scaled by sqrt(width) in forward, so start at std 1/sqrt(width): tokens and positions weigh the
        # same.
        nn.init.normal_(self.embed.weight, std=width**-0.5)
        with torch.no_grad():
            self.embed.weight[pad_id].zero_()
        self.positions = nn.Embedding(max_length, width) if positions == "learned" else None
        # Recomputed from the config, so not saved with the weights.
        self.register_buffer(
            "sinusoids",
            sinusoid_table(max_length, width) if positions == "sinusoidal" else None,
            persistent=False,
        )
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, ffn_multiplier, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Args: ids (B, T) token ids, right-padded with pad_id, T <= max_length.

        Returns logits (B, num_classes)."""
        T = ids.shape[1]
        if self.max_length < T:
            raise ValueError(
                f"got {T} tokens but the model was built for max_length {self.max_length}: "
                "truncate texts to max_length when tokenizing"
            )
        real = ids != self.pad_id  # (B, T)
        attend = real.clone()
        attend[:, 0] = True  # an empty text attends to its first pad rather than to nothing (NaN)
        table = self.sinusoids if self.positions is None else self.positions.weight  # (max_length, C)
        x = self.dropout(self.embed(ids) * math.sqrt(self.embed.embedding_dim) + table[:T])  # (B, T, C)
        for block in self.blocks:
            x = block(x, attend)
        x = self.norm(x)
        if self.pooling == "cls":
            pooled = x[:, 0]  # the BERT tokenizer puts [CLS] first
        else:
            pooled = (x * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1)  # (B, C)
        return self.head(self.dropout(pooled))


def build_transformer(
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab_size: int,
    pad_id: int,
    *,
    width: int = 256,
    depth: int = 4,
    heads: int = 4,
    ffn_multiplier: int = 4,
    positions: str = "sinusoidal",
    pooling: str = "mean",
    dropout: float = 0.1,
) -> nn.Module:
    """A transformer encoder text classifier.

    Args:
        input_shape: (max_length,): the longest token sequence; sizes the position table.
        num_classes: output logits (B, num_classes) for ids (B, T), T <= max_length.
        vocab_size: size of the tokenizer's vocabulary (30522 for BERT / MiniLM).
        pad_id: the padding token id (0 for BERT); pads are never attended to or pooled.
        width: embedding and hidden width C; must be divisible by heads.
        depth: number of encoder blocks.
        heads: attention heads, each of width C / heads.
        ffn_multiplier: the MLP in each block is ffn_multiplier * C wide.
        positions: "sinusoidal" (fixed) or "learned" (one vector per position up to max_length).
        pooling: "mean" over the real tokens, or "cls" (the first token).
        dropout: dropout on embeddings, attention, residual branches and before the head.
    """
    check_text_options(
        input_shape,
        vocab_size,
        pad_id,
        width=width,
        depth=depth,
        heads=heads,
        ffn_multiplier=ffn_multiplier,
        max_length=input_shape[0] if input_shape else 0,
    )
    if width % heads:
        raise ValueError(f"width {width} is not divisible by heads {heads}: pick heads that divide width")
    if positions not in POSITIONS:
        raise ValueError(
            f"positions {positions!r} is not one of {', '.join(POSITIONS)}: "
            "positions must be 'sinusoidal' or 'learned'"
        )
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}: pick one of them")
    return TransformerClassifier(
        input_shape[0],
        num_classes,
        vocab_size,
        pad_id,
        width,
        depth,
        heads,
        ffn_multiplier,
        positions,
        pooling,
        dropout,
    )


def prune_transformer(
    model: nn.Module, options: dict, ratio: float, build: Callable[..., nn.Module]
) -> tuple[nn.Module, dict, Plan]:
    """Feed-forward units only: heads can't go, since the head width is width / heads and width feeds
    the embeddings; `ffn_multiplier` is whole, so a block keeps a multiple of `width` units."""
    plan: Plan = {}
    for index in range(len(model.blocks)):
        units, prefix = (f"blocks.{index}",), f"blocks.{index}.mlp"
        plan |= {
            f"{prefix}.0.weight": (units, ()),
            f"{prefix}.0.bias": (units,),
            f"{prefix}.2.weight": ((), units),
        }
    changes = {"ffn_multiplier": shrink(options["ffn_multiplier"], ratio)}
    return build(**changes), changes, plan
