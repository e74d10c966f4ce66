"""A decoder-only transformer (GPT), nanoGPT-style, in one file.

Pre-norm blocks, causal scaled-dot-product attention, tied input/output embeddings by default, learned or
rotary positions. The options also cover a Llama-architecture checkpoint (RMSNorm, SwiGLU, rotary positions
with Llama's rotate-half convention, grouped-query attention, no biases), so `llm/` maps one onto this class
with a state-dict key map.

Shapes: B batch rows, T new positions, L cached positions (prefix + new), C = n_embd, nh query heads,
nkv key/value heads, hs = head size = C // nh, V vocabulary.

Decoding with a `generation.kv_cache.KVCache`: row b of `idx` continues cache slot `slots[b]` at the
positions after that slot's length; the new keys and values are written into the preallocated cache and
each row attends to its own slot's prefix plus its new tokens, so rows of different lengths decode
together (a batched decode step is B rows with T = 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int  # the longest context: the position table's size (learned) or the rotary table's
    dropout: float = 0.0
    bias: bool = False  # biases in the linear layers and layer norms (GPT-2 has them; Llama does not)
    n_kv_head: int | None = None  # None = n_head; fewer = grouped-query attention
    positions: Literal["learned", "rope"] = "learned"
    rope_theta: float = 10000.0
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    mlp: Literal["gelu", "swiglu"] = "gelu"
    intermediate_size: int | None = None  # None = 4 * n_embd
    tie_embeddings: bool = True

    def __post_init__(self):
        self.n_kv_head = self.n_kv_head or self.n_head
        self.intermediate_size = self.intermediate_size or 4 * self.n_embd
        if self.n_embd % self.n_head or self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_embd {self.n_embd} must be a multiple of n_head {self.n_head}, "
                f"and n_head a multiple of n_kv_head {self.n_kv_head}"
            )

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


class RMSNorm(nn.Module):
    """Llama's norm: x / rms(x) * weight, computed in float32."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


def rotate_half(x):
    """Llama's convention: the two halves of the head, (x1, x2) -> (-x2, x1)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        hs, self.n_head, self.n_kv_head = config.head_size, config.n_head, config.n_kv_head
        self.q = nn.Linear(config.n_embd, config.n_head * hs, bias=config.bias)
        self.k = nn.Linear(config.n_embd, config.n_kv_head * hs, bias=config.bias)
        self.v = nn.Linear(config.n_embd, config.n_kv_head * hs, bias=config.bias)
        self.proj = nn.Linear(config.n_head * hs, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope, cache=None, layer=0, slots=None, positions=None, mask=None, **view):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, -1).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k(x).view(B, T, self.n_kv_head, -1).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v(x).view(B, T, self.n_kv_head, -1).transpose(1, 2)  # (B, nkv, T, hs)
        if rope is not None:
            cos, sin = rope  # (B or 1, 1, T, hs)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        if cache is None:  # causal, or within each packed example when a mask is given
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=mask is None,
                dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=self.n_kv_head != self.n_head,
            )
        else:
            # write the new keys/values at their positions, then attend over each slot's first L positions
            ck, cv = cache.k[layer], cache.v[layer]  # (slots, nkv, max_len, hs)
            L = view["length"]
            if view["start"] is not None:  # slots 0..B-1, all at one length: a slice, no index tensors
                ck[:B, :, view["start"] : L] = k
                cv[:B, :, view["start"] : L] = v
            else:
                ck[slots[:, None], :, positions] = k.transpose(1, 2).to(ck.dtype)  # (B, T, nkv, hs) written
                cv[slots[:, None], :, positions] = v.transpose(1, 2).to(cv.dtype)
            if view["in_order"]:
                keys, values = ck[:B, :, :L], cv[:B, :, :L]  # a view: no copy
            else:
                keys, values = ck[slots, :, :L], cv[slots, :, :L]  # (B, nkv, L, hs)
            y = F.scaled_dot_product_attention(
                q,
                keys.to(q.dtype),
                values.to(q.dtype),
                attn_mask=mask,
                is_causal=view["causal"],
                enable_gqa=self.n_kv_head != self.n_head,
            )
        y = y.transpose(1, 2).contiguous().view(B, T, -1)  # (B, T, nh * hs)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    """gelu: down(gelu(up(x))) as GPT-2 (tanh approximation); swiglu: down(silu(gate(x)) * up(x)) as Llama."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        if self.swiglu:
            self.gate = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.up = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.down = nn.Linear(config.intermediate_size, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        hidden = F.silu(self.gate(x)) * self.up(x) if self.swiglu else F.gelu(self.up(x), approximate="tanh")
        return self.dropout(self.down(hidden))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm1 = make_norm(config)
        self.attn = Attention(config)
        self.norm2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope, **cached):
        x = x + self.attn(self.norm1(x), rope, **cached)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.positions == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        else:
            hs = config.head_size
            inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs))
            angles = torch.outer(
                torch.arange(config.block_size, dtype=torch.float32), inv_freq
            )  # (block, hs/2)
            angles = torch.cat((angles, angles), dim=-1)  # (block, hs): Llama repeats the halves
            self.register_buffer("rope_cos", angles.cos(), persistent=False)
            self.register_buffer("rope_sin", angles.sin(), persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
            # saved once (safetensors refuses shared tensors): the state dict leaves the head out, loading
            # fills it from the embedding
            self._register_state_dict_hook(_drop_tied_head)
            self.register_load_state_dict_pre_hook(_fill_tied_head)
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled down by depth so the residual stream does not grow with layers
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, non_embedding: bool = True) -> int:
        """Parameters, without the position table (as nanoGPT counts them) unless asked."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.config.positions == "learned":
            n -= self.wpe.weight.numel()
        return n

    def forward(self, idx, cache=None, slots=None, segments=None):
        """idx (B, T) token ids -> logits (B, T, V).

        Without a cache: causal attention over positions 0..T-1 (training). With a cache: row b continues
        slot `slots[b]` (default: slot b) at position `cache.lengths[slots[b]]`; its lengths advance by T.
        segments (B, T), without a cache: rows packed with several examples, numbered; each position attends
        causally within its own example only, and positions restart at 0 where an example starts.
        """
        B, T = idx.shape
        rope, cached = None, {}
        if cache is None:
            if self.config.block_size < T:
                raise ValueError(f"{T} positions is longer than the context of {self.config.block_size}")
            positions = slice(0, T)  # every row at positions 0..T-1
            if segments is not None:  # packed rows: positions restart per example, attention kept inside it
                positions, mask = packed_attention(segments)
                cached = {"mask": mask}
        elif slots is None and cache.slots >= B and self._one_length(cache.lengths, B):
            # the common case (batch-1 decoding, a prefill of rows from 0): rows 0..B-1 all continue at one
            # position, so the cache is written and read through slices and positions are a range; this
            # saves the index tensors, the mask checks and their host syncs of the general case below
            first = int(cache.lengths[0])
            end = first + T
            if end > min(self.config.block_size, cache.max_len):
                raise ValueError(
                    f"position {end - 1} is past the context ({self.config.block_size}) or the cache "
                    f"({cache.max_len}); reset the slot or crop the prompt"
                )
            positions = slice(first, end)
            mask = None
            if T > 1 and first > 0:  # new tokens after a prefix: each sees the prefix and itself, causally
                keys = torch.arange(end, device=idx.device)
                mask = (
                    keys[None, None, None, :]
                    <= torch.arange(first, end, device=idx.device)[None, None, :, None]
                )
            cached = {
                "cache": cache,
                "slots": None,
                "positions": None,
                "mask": mask,
                "causal": T > 1 and first == 0,
                "length": end,
                "in_order": True,
                "start": first,
            }
        else:
            slots = torch.arange(B, device=idx.device) if slots is None else slots.to(idx.device)
            start = cache.lengths[slots].to(idx.device)  # (B,)
            positions = start[:, None] + torch.arange(T, device=idx.device)  # (B, T)
            end = int(positions.max()) + 1
            if end > min(self.config.block_size, cache.max_len):
                raise ValueError(
                    f"position {end - 1} is past the context ({self.config.block_size}) or the cache "
                    f"({cache.max_len}); reset the slot or crop the prompt"
                )
            # row b, new token t sees cached positions 0..start[b]+t: its prefix and itself, causally. Rows of
            # one length need no mask (SDPA with a mask is far slower on a CPU): one new token each sees all
            # L positions; a first prefill is plain causal attention.
            mask, causal = None, False
            if not bool((start == start[0]).all()) or (T > 1 and int(start[0]) > 0):
                keys = torch.arange(end, device=idx.device)
                mask = keys[None, None, None, :] <= positions[:, None, :, None]  # (B, 1, T, L)
            elif T > 1:
                causal = True
            in_order = bool((slots == torch.arange(B, device=slots.device)).all())  # slots 0..B-1: a view
            cached = {
                "cache": cache,
                "slots": slots,
                "positions": positions,
                "mask": mask,
                "causal": causal,
                "length": end,
                "in_order": in_order,
                "start": None,
            }
        x = self.wte(idx)  # (B, T, C)
        if self.config.positions == "learned":
            x = x + (self.wpe.weight[positions] if isinstance(positions, slice) else self.wpe(positions))
        else:
            cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (B or 1, T, hs), or (T, hs)
            if isinstance(positions, slice):
                cos, sin = cos[None], sin[None]
            rope = (cos[:, None].to(x.dtype), sin[:, None].to(x.dtype))
        x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, **({**cached, "layer": layer} if cached else {}))
        if cache is not None:
            if slots is None:
                cache.lengths[:B] += T
            else:
                cache.lengths[slots] += T
        return self.lm_head(self.norm(x))  # (B, T, V)

    @staticmethod
    def _one_length(lengths: torch.Tensor, rows: int) -> bool:
        """Whether slots 0..rows-1 hold the same number of positions."""
        return rows == 1 or bool((lengths[:rows] == lengths[0]).all())


def packed_attention(segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """segments (B, T) example numbers of packed rows -> positions (B, T) restarting at 0 with each example,
    and the attention mask (B, 1, T, T): True where a query may see a key (same example, not later)."""
    T = segments.shape[1]
    steps = torch.arange(T, device=segments.device).expand_as(segments)  # (B, T)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    first = torch.where(starts, steps, torch.zeros_like(steps)).cummax(dim=1).values  # example's start
    same = segments[:, :, None] == segments[:, None, :]  # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    return steps - first, (same & causal)[:, None]


def _drop_tied_head(module, state_dict, prefix, local_metadata):
    state_dict.pop(prefix + "lm_head.weight", None)


def _fill_tied_head(module, state_dict, prefix, *args):
    if prefix + "wte.weight" in state_dict:
        state_dict.setdefault(prefix + "lm_head.weight", state_dict[prefix + "wte.weight"])


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on the 2-D weights (matmuls, embeddings) only; biases and norms none."""
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_gpt(
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab_size: int,
    pad_id: int,
    n_layer: int = 4,
    n_head: int = 4,
    n_embd: int = 128,
    block_size: int = 256,
    dropout: float = 0.0,
    bias: bool = False,
    positions: Literal["learned", "rope"] = "learned",
    rope_theta: float = 10000.0,
) -> GPT:
    """The `gpt` family (model.name: gpt). text_generation sizes n_layer, n_head, n_embd and block_size
    from the corpus and the time budget when the config leaves them out; these defaults are for a direct
    build only. `input_shape`, `num_classes` and `pad_id` come with every text family and are not used."""
    return GPT(
        GPTConfig(
            vocab_size=vocab_size,
            n_layer=n_layer,
            n_head=n_head,
            n_embd=n_embd,
            block_size=block_size,
            dropout=dropout,
            bias=bias,
            positions=positions,
            rope_theta=rope_theta,
        )
    )


def retrain_from_feedback(champion, package, spec: dict, rows, alias: str, **options) -> dict:
    """`Family.retrains`: served answers as training texts, a challenger trained on from the champion's
    weights, compared by bits per byte (generation/retrain.py)."""
    from modelfoundry.generation.retrain import retrain_gpt

    return retrain_gpt(champion, package, spec, rows, alias, **options)
