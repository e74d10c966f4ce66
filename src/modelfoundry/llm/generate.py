"""Greedy answers to many prompts at once, for evaluation: each prompt prefilled into its own slot of one
preallocated KV cache, then every unfinished row decoded together, one position per step."""

from __future__ import annotations

import torch

from modelfoundry.generation.kv_cache import KVCache


@torch.inference_mode()
def greedy_answers(
    model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 16
) -> list[str]:
    """The greedy continuation of each prompt (token ids), up to an end-of-turn token or `max_new_tokens`."""
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        answers += _batch(model, tokenizer, prompts[start : start + batch_size], max_new_tokens)
    return answers


def _batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    block = model.config.block_size
    prompts = [p[-(block - max_new_tokens) :] if len(p) + max_new_tokens > block else p for p in prompts]
    cache = KVCache.allocate(
        model.config, len(prompts), max(map(len, prompts)) + max_new_tokens, param.dtype, param.device
    )
    stop = set(getattr(tokenizer, "stop_ids", ())) | {tokenizer.eos_id}
    nxt = torch.empty(len(prompts), dtype=torch.long, device=param.device)
    for row, ids in enumerate(prompts):  # prefill: each prompt at its own length, no padding
        idx = torch.tensor([ids], device=param.device)
        nxt[row] = model(idx, cache, torch.tensor([row], device=param.device))[0, -1].argmax()
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
    return [tokenizer.decode(ids).strip() for ids in out]
