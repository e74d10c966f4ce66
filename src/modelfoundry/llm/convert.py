"""Llama-architecture checkpoints <-> our GPT (models/gpt.py): the configuration and a state-dict key map.

Llama's layout is GPT's with norm="rmsnorm", mlp="swiglu", positions="rope" (rotate-half, as GPT) and
grouped-query attention; only the names differ. `load_base` gives the converted model and tokenizer of a
base checkpoint, from the cache after the first time (hf.py says why).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from modelfoundry.errors import UserError
from modelfoundry.llm import hf
from modelfoundry.llm.tokenizer import HFTokenizer

# ours <- Llama's (per layer: blocks.{i}. <- model.layers.{i}.)
LAYER_KEYS = {
    "norm1.weight": "input_layernorm.weight",
    "attn.q.weight": "self_attn.q_proj.weight",
    "attn.k.weight": "self_attn.k_proj.weight",
    "attn.v.weight": "self_attn.v_proj.weight",
    "attn.proj.weight": "self_attn.o_proj.weight",
    "norm2.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}
TOP_KEYS = {
    "wte.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
DEFAULT_CONTEXT = 512  # tokens, when model.block_size is not given (at most the model's own)
# the user's (Llama's) names of GPT's linear layers, for lora.targets
LINEAR_NAMES = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "proj": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
}


def gpt_config(config, block_size: int | None = None):
    """The GPTConfig of a transformers LlamaConfig; `block_size` (the context) defaults to the model's."""
    from modelfoundry.models.gpt import GPTConfig

    return GPTConfig(
        vocab_size=config.vocab_size,
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        n_embd=config.hidden_size,
        block_size=block_size or config.max_position_embeddings,
        n_kv_head=config.num_key_value_heads,
        positions="rope",
        rope_theta=hf.rope(config)[0],
        norm="rmsnorm",
        norm_eps=config.rms_norm_eps,
        mlp="swiglu",
        intermediate_size=config.intermediate_size,
        tie_embeddings=bool(config.tie_word_embeddings),
        bias=False,
    )


def from_llama(state: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """A Llama state dict renamed to GPT's keys (tied: no separate lm_head)."""
    out = {}
    for ours, theirs in TOP_KEYS.items():
        if theirs in state and not (tied and ours == "lm_head.weight"):
            out[ours] = state[theirs]
    for key, value in state.items():
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", key)
        if m:
            ours = next((o for o, t in LAYER_KEYS.items() if t == m[2]), None)
            if ours is None:
                raise ValueError(f"no GPT weight for {key}")
            out[f"blocks.{m[1]}.{ours}"] = value
    return out


def to_llama(state: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """GPT's state dict under Llama's keys (the merged export), the inverse of `from_llama`."""
    out = {}
    for ours, theirs in TOP_KEYS.items():
        if ours in state and not (tied and ours == "lm_head.weight"):
            out[theirs] = state[ours]
    for key, value in state.items():
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
        if m:
            out[f"model.layers.{m[1]}.{LAYER_KEYS[m[2]]}"] = value
    return out


def gpt_from_transformers(model, block_size: int | None = None):
    """Our GPT with the weights of a transformers Llama model (float32, eval mode)."""
    from modelfoundry.models.gpt import GPT

    config = gpt_config(model.config, block_size)
    gpt = GPT(config)
    state = from_llama(model.state_dict(), config.tie_embeddings)
    if config.tie_embeddings:
        state.setdefault("lm_head.weight", state["wte.weight"])
    gpt.load_state_dict(state, strict=True)
    return gpt.float().eval()


def load_base(path: str | Path | None, block_size: int | None = None):
    """(GPT, HFTokenizer, Base, sha256) of a base checkpoint; converted once, then read from the cache.
    `block_size`: the context (default DEFAULT_CONTEXT, at most the model's own)."""
    import dataclasses

    from safetensors.torch import load_file, save_file

    from modelfoundry.models.gpt import GPT, GPTConfig
    from modelfoundry.runfiles import atomic_folder, atomic_write_json

    base = hf.locate(path)
    sha = hf.fingerprint(base)
    cache = hf.cache_folder(sha)
    if not (cache / "gpt.safetensors").is_file():
        model, tokenizer = hf.load_transformers(base)
        gpt = gpt_from_transformers(model, None)
        with atomic_folder(cache) as tmp:
            state = {
                k: v.contiguous()
                for k, v in gpt.state_dict().items()
                if k != "lm_head.weight" or not gpt.config.tie_embeddings
            }
            save_file(state, str(tmp / "gpt.safetensors"))
            atomic_write_json(
                tmp / "gpt.json", {"config": dataclasses.asdict(gpt.config), "source": base.reference}
            )
            tokenizer.save_pretrained(tmp / "tokenizer")
    config = GPTConfig(**hf.read_json(cache / "gpt.json")["config"])
    if block_size is None:  # a context that trains and decodes on a CPU, not SmolLM2's full 8192
        block_size = min(DEFAULT_CONTEXT, config.block_size)
    if block_size:
        if block_size > config.block_size:
            raise UserError(
                f"model.block_size: {block_size} is longer than the context {base.reference} was trained "
                f"for ({config.block_size} tokens); use {config.block_size} or less."
            )
        config.block_size = block_size
    gpt = GPT(config)  # ~1 s of random init that the weights then replace
    state = load_file(str(cache / "gpt.safetensors"))
    if config.tie_embeddings:
        state["lm_head.weight"] = state["wte.weight"]
    gpt.load_state_dict(state, strict=True)
    return gpt.eval(), HFTokenizer.load(cache / "tokenizer"), base, sha
