"""The decode loop: prefill the prompt once into a preallocated cache, then one position per new token.

`stream` yields text pieces as they are decoded. A piece never ends inside a UTF-8 character (a byte-level
token can be half of one), and text that may be the start of a stop sequence is held back until it is
known not to be, so a stop sequence is never half-printed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch

from modelfoundry.errors import UserError
from modelfoundry.generation import speculative
from modelfoundry.generation.kv_cache import KVCache
from modelfoundry.generation.sampling import check_settings, pick

HOLD_BROKEN = 4  # tokens a piece ending in U+FFFD (an unfinished UTF-8 character) may wait for the rest


def prompt_ids(tokenizer, prompt: str, block_size: int, truncate: bool = True) -> list[int]:
    """The prompt's tokens, the last `block_size - 1` of them when longer (with a warning), so at least one
    new token fits; UserError instead with truncate=False."""
    ids = tokenizer.encode(prompt)
    if not ids:
        ids = [tokenizer.eos_id if tokenizer.eos_id is not None else 0]  # an empty prompt starts a document
    room = block_size - 1
    if len(ids) > room:
        if not truncate:
            raise UserError(
                f"prompt: {len(ids):,} tokens is longer than the model's context of {block_size:,} tokens "
                f"(less one for the answer). Shorten it, or allow truncation (leave out --no-truncate) to "
                f"keep its last {room:,} tokens."
            )
        warnings.warn(
            f"the prompt is {len(ids):,} tokens and the context {block_size:,}: "
            f"only its last {room:,} tokens are used",
            stacklevel=3,
        )
        ids = ids[-room:]
    return ids


def stop_prefix_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that is the beginning of a stop sequence (held back)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


@torch.inference_mode()
def stream(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    truncate: bool = True,
    use_cache: bool = True,
    prompt_lookup: int = 0,
) -> Iterator[str]:
    """Text pieces of the continuation of `prompt`, as they are decoded.

    Stops after `max_new_tokens` tokens, at the end-of-text token, or before the first stop sequence (which is
    not yielded). When the context fills up, the last half of it is prefilled again and decoding goes on.
    use_cache=False recomputes the whole context for every token (for comparison only). prompt_lookup > 0
    at temperature 0: up to that many tokens guessed from the context are checked per pass (the same text,
    faster when the answer copies from the prompt: generation/speculative.py).
    """
    check_settings(temperature, top_k, top_p)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise UserError(f"max_new_tokens: {max_new_tokens!r} must be a whole number >= 1.")
    stops = [s for s in ([stop] if isinstance(stop, str) else stop) if s]
    block_size = model.config.block_size
    context = prompt_ids(tokenizer, prompt, block_size, truncate)
    param = next(model.parameters())
    device = param.device
    weights = sum(p.numel() for p in model.parameters())
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    cache = KVCache.allocate(model.config, 1, block_size, param.dtype, device) if use_cache else None
    try:
        logits = _forward(model, context, cache, device, weights)  # prefill: (1, V)
        pending: list[int] = []  # tokens not yet turned into text
        held = ""  # decoded text held back: it may begin a stop sequence
        guessed = None  # greedy tokens with prompt-lookup speculation, when asked for
        if prompt_lookup and temperature == 0 and cache is not None:
            guessed = speculative.greedy_tokens(model, context, cache, logits, prompt_lookup)
        for _ in range(max_new_tokens):
            if guessed is not None:
                token = next(guessed)
            else:
                token = int(pick(logits, temperature, top_k, top_p, generator)[0])
            if token == tokenizer.eos_id:
                break
            pending.append(token)
            piece = tokenizer.decode(pending)
            if piece.endswith("\ufffd") and len(pending) < HOLD_BROKEN:
                piece = None  # the rest of a character is still to come
            if piece is not None:
                pending = []
                held += piece
                hits = [i for i in (held.find(s) for s in stops) if i >= 0]
                if hits:
                    if held[: min(hits)]:
                        yield held[: min(hits)]
                    return
                keep = stop_prefix_length(held, stops)
                if len(held) > keep:
                    yield held[: len(held) - keep]
                    held = held[len(held) - keep :]
            context.append(token)
            if guessed is not None:
                continue  # speculative.greedy_tokens feeds the cache itself
            if cache is not None and int(cache.lengths[0]) >= cache.max_len:
                cache.reset()  # the context is full: slide, prefilling its last half again
                logits = _forward(model, context[-(block_size // 2) :], cache, device, weights)
            else:
                logits = _forward(
                    model, [token] if cache is not None else context[-block_size:], cache, device, weights
                )
        rest = held + (tokenizer.decode(pending) if pending else "")
        if rest:
            yield rest
    finally:
        model.train(was_training)


# A forward pass of fewer FLOPs than this runs on one CPU thread: a cached decoding step of a small model is
# a few dozen tiny kernels, and handing each to a second thread costs more than the work (on a busy machine
# a thread that is not scheduled stalls every kernel: measured 7x slower per token with two threads than
# one for a 4-layer, 128-wide model). Larger steps keep every thread.
ONE_THREAD_FLOPS = 50e6


def _forward(model, ids: list[int], cache, device, weights: int) -> torch.Tensor:
    """The next-token logits (1, V) after feeding `ids` (into the cache when there is one); `weights`: the
    model's parameter count (the FLOPs of the pass are about 2 x weights x len(ids))."""
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    threads = torch.get_num_threads()
    if threads == 1 or device.type != "cpu" or 2 * weights * len(ids) > ONE_THREAD_FLOPS:
        return model(idx, cache)[:, -1].float()
    torch.set_num_threads(1)
    try:
        return model(idx, cache)[:, -1].float()
    finally:
        torch.set_num_threads(threads)


def generate(model, tokenizer, prompt: str, max_new_tokens: int, **options) -> str:
    """The whole continuation at once (see `stream`)."""
    return "".join(stream(model, tokenizer, prompt, max_new_tokens, **options))
