"""Picking the next token from logits: greedy at temperature 0, else temperature, top-k, top-p (nucleus)."""

from __future__ import annotations

import math

import torch

from modelfoundry.errors import UserError


def check_settings(temperature: float, top_k: int | None, top_p: float | None, name=lambda key: key) -> None:
    """UserError for sampling settings out of range; `name(key)` says how the caller spells each key."""
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise UserError(
            f"{name('temperature')}: {temperature!r} must be a number >= 0 (0 = greedy, 1 = the model's own "
            "distribution)."
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise UserError(f"{name('top_k')}: {top_k!r} must be a whole number >= 1, or left out for no limit.")
    if top_p is not None and (
        not isinstance(top_p, (int, float)) or not math.isfinite(top_p) or not 0 < top_p <= 1
    ):
        raise UserError(f"{name('top_p')}: {top_p!r} must be in (0, 1]; 1 keeps every token.")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """logits (B, V) with every token outside the top k / the top-p nucleus set to -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already reach top_p (the first one always stays)
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def pick(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits (B, V) -> the next token of each row (B,); temperature 0 = argmax (greedy)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
