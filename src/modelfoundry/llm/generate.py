"""Greedy answers to many prompts at once, for evaluation: the prompts prefilled together into their own
slots of one preallocated KV cache, then every unfinished row decoded together, one position per step.

The prefill pads the shorter prompts on the right: each row's keys past its own length are garbage, but
the cache's length of its slot is set back to the prompt's, so the next token overwrites the first of them
and the causal mask (keys up to a row's own position) never lets a row see the rest."""

from __future__ import annotations

import torch

from modelfoundry.generation.kv_cache import KVCache


@torch.inference_mode()
def greedy_answers(
    model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 16
) -> list[str]:
    """The greedy continuation of each prompt (token ids), up to an end-of-turn token or `max_new_tokens`."""
    return [
        tokenizer.decode(ids).strip()
        for ids in greedy_ids(model, tokenizer, prompts, max_new_tokens, batch_size)
    ]


def greedy_ids(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 16):
    """The greedy continuations as token ids (the end-of-turn token left out)."""
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        out += _batch(model, tokenizer, prompts[start : start + batch_size], max_new_tokens)
    return out


@torch.inference_mode()
def _batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    block = model.config.block_size
    prompts = [p[-(block - max_new_tokens) :] if len(p) + max_new_tokens > block else p for p in prompts]
    cache = KVCache.allocate(
        model.config, len(prompts), max(map(len, prompts)) + max_new_tokens, param.dtype, param.device
    )
    stop = set(getattr(tokenizer, "stop_ids", ())) | {tokenizer.eos_id}
    lengths = torch.tensor([len(p) for p in prompts], device=param.device)
    idx = torch.full(
        (len(prompts), int(lengths.max())), tokenizer.pad_id, dtype=torch.long, device=param.device
    )
    for row, ids in enumerate(prompts):
        idx[row, : len(ids)] = torch.tensor(ids)
    head = model.lm_head  # the output layer on each row's last prompt position only
    model.lm_head = torch.nn.Identity()
    try:
        hidden = model(idx, cache)  # (B, T, C)
    finally:
        model.lm_head = head
    cache.lengths[: len(prompts)] = lengths.to(cache.lengths.device)
    nxt = head(hidden[torch.arange(len(prompts)), lengths - 1]).argmax(-1)  # (B,)
    out: list[list[int]] = [[] for _ in prompts]
    active = torch.ones(len(prompts), dtype=torch.bool)
    for step in range(max_new_tokens):
        for row in active.nonzero().flatten().tolist():
            token = int(nxt[row])
            if token in stop:
                active[row] = False
            else:
                out[row].append(token)
        if not active.any() or step == max_new_tokens - 1:
            break
        rows = active.nonzero().flatten().to(param.device)
        logits = model(nxt[rows][:, None], cache, rows)  # (R, 1, V)
        nxt[rows] = logits[:, -1].argmax(-1)
    model.train(was_training)
    return out
