"""Greedy decoding with prompt-lookup speculation: several tokens per pass over the weights, the same text.

At batch 1 a forward pass costs about the same for one new position as for ten: it is bound by reading every
weight once (540 MB for SmolLM2-135M in fp32). So guess the next few tokens cheaply and check them all in
one pass. The guess (the draft) is what followed the latest earlier occurrence of the context's last n
tokens (n = 3, then 2), in the prompt or in the text decoded so far: answers that quote their prompt, code
edits, summaries and repeated phrases are full of such copies. The pass over [pending token,
d1..dk] gives the model's own greedy choice after each of them; the drafts are kept up to the first one
that differs, and the model's choice at that point comes for free, so every pass yields at least one token
and the text is the one plain greedy decoding gives. The cache's length is set back past the rejected
drafts (their keys are overwritten by the next pass and masked out until then).

A pass over several positions costs more than one over a single position on a CPU (1.5-2x for 2-9 positions
here: bench/RESULTS.md), so guesses must be good to pay: a single matching token (n = 1) guesses
wrong far too often, and after a guess that kept nothing the next passes guess nothing (1, 2, 4, ... up to
16 of them), so text that copies nothing decodes at about the plain speed.

Exactly equal to plain greedy up to float rounding: a pass over k+1 positions sums in a different order
than k+1 passes over one, and a near-tie between two tokens can flip (as it can between a prefill and the
cached loop).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from modelfoundry.generation.kv_cache import KVCache

DRAFT_TOKENS = 8  # most tokens guessed per pass: 4-12 came within 3% of each other on bench/decode_speed.py
# outputs (replayed with the measured pass costs), more paying only on copying answers
MAX_NGRAM = 3  # the longest end of the context looked up
MIN_NGRAM = 2  # the shortest: single tokens recur everywhere and their continuations rarely do
MAX_BACKOFF = 16  # most passes without guessing after guesses that kept nothing


@dataclass
class Stats:
    """What the speculation did: passes over the model after the prefill, draft tokens checked, kept."""

    passes: int = 0
    drafted: int = 0
    accepted: int = 0
    tokens: int = 0  # tokens yielded

    @property
    def acceptance(self) -> float:
        """The share of drafted tokens kept (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0


def lookup_drafts(
    ids: list[int], count: int, max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM
) -> list[int]:
    """Up to `count` tokens that followed the latest earlier occurrence of the last n tokens of `ids`
    (n = max_ngram down to min_ngram); [] when none of them occurred before."""
    size = len(ids)
    for n in range(min(max_ngram, size - 1), min_ngram - 1, -1):
        tail = ids[-n:]
        for start in range(size - n - 1, -1, -1):  # latest first; the tail itself is not a match
            if ids[start : start + n] == tail:
                return ids[start + n : start + n + count]
    return []


def greedy_tokens(
    model,
    context: list[int],
    cache: KVCache,
    logits: torch.Tensor,
    draft_tokens: int = DRAFT_TOKENS,
    stats: Stats | None = None,
) -> Iterator[int]:
    """The greedy tokens after `context`, endlessly (the caller stops at the end of text or its budget).

    `context` is already in slot 0 of `cache` and `logits` (1, V) are the prefill's last. When the cache
    fills up, the last half of the context is prefilled again, as `decode.stream` does.
    """
    stats = stats if stats is not None else Stats()
    block_size = model.config.block_size
    device = cache.lengths.device
    ids = list(context)
    pending = int(logits.argmax(-1)[0])  # decided, not yet in the cache
    misses = quiet = 0  # guesses in a row that kept nothing; passes left without guessing
    while True:
        ids.append(pending)
        stats.tokens += 1
        yield pending
        held = int(cache.lengths[0])
        if held >= cache.max_len:  # full: slide, prefilling the last half of the context again
            cache.reset()
            pending = int(_logits(model, ids[-(block_size // 2) :], cache, device)[-1].argmax())
            continue
        drafts = [] if quiet else lookup_drafts(ids, min(draft_tokens, cache.max_len - held - 1))
        quiet = max(0, quiet - 1)
        choices = _logits(model, [pending, *drafts], cache, device).argmax(-1).tolist()  # (k+1,)
        stats.passes += 1
        stats.drafted += len(drafts)
        kept = 0
        while kept < len(drafts) and drafts[kept] == choices[kept]:
            kept += 1
        stats.accepted += kept
        if drafts:
            misses = 0 if kept else misses + 1
            quiet = min(2 ** (misses - 1), MAX_BACKOFF) if misses else 0
        cache.lengths[0] = held + 1 + kept  # the pending token and the kept drafts; the rest rolled back
        for token in drafts[:kept]:
            ids.append(token)
            stats.tokens += 1
            yield token
        pending = choices[kept]


def _logits(model, ids: list[int], cache: KVCache, device) -> torch.Tensor:
    """The next-token logits (T, V) after each of `ids`, fed into slot 0 of the cache."""
    return model(torch.tensor([ids], dtype=torch.long, device=device), cache)[0].float()


@torch.inference_mode()
def greedy(
    model, prompt: list[int], max_new_tokens: int, stop_ids=(), draft_tokens: int = DRAFT_TOKENS
) -> tuple[list[int], Stats]:
    """The greedy continuation of `prompt` (token ids, shorter than the context) up to a token of
    `stop_ids` (left out) or `max_new_tokens`, and what the speculation did; draft_tokens=0 decodes plainly
    (one pass per token) through the same code."""
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    cache = KVCache.allocate(model.config, 1, model.config.block_size, param.dtype, param.device)
    stats = Stats()
    out: list[int] = []
    try:
        logits = _logits(model, list(prompt), cache, param.device)[-1:]
        for token in greedy_tokens(model, list(prompt), cache, logits, draft_tokens, stats):
            if token in stop_ids:
                break
            out.append(token)
            if len(out) >= max_new_tokens:
                break
    finally:
        model.train(was_training)
    return out, stats
