"""Prompt-lookup speculative decoding gives plain greedy decoding's text, with fewer passes over the model."""

from __future__ import annotations

import pytest
import torch

from modelfoundry.generation import decode, speculative


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDRY_LLM_CACHE", str(tmp_path / "llm-cache"))


def _chatty_llama(tiny_llama, block_size: int):
    """The tiny random Llama with larger weights: greedy text that partly repeats itself, so some drafts are
    kept and some rejected."""
    from modelfoundry.llm.convert import load_base

    gpt, tokenizer, *_ = load_base(tiny_llama, block_size)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in gpt.parameters():
            p.normal_(0, 0.5)
    return gpt, tokenizer


def test_lookup_drafts_continue_the_latest_earlier_occurrence_of_the_longest_tail():
    ids = [5, 6, 7, 8, 9, 1, 6, 7, 2, 3, 6, 7]
    assert speculative.lookup_drafts(ids, 2) == [2, 3]  # "6 7" last seen before 2 3 (not before 8 9)
    assert speculative.lookup_drafts([1, 2, 3, 1, 4], 3) == []  # "1 4" never occurred before
    assert speculative.lookup_drafts([1, 2, 3, 1, 4], 3, min_ngram=1) == []  # nor 4
    assert speculative.lookup_drafts([4, 9, 9, 9, 4], 10, min_ngram=1) == [9, 9, 9, 4]  # up to the end


def test_speculative_greedy_gives_the_plain_greedy_text_in_fewer_passes(tiny_llama):
    gpt, tokenizer = _chatty_llama(tiny_llama, 256)
    chat = [{"role": "user", "content": "the cat sat on the mat and the cat"}]
    prompt = tokenizer.apply_chat(chat)
    plain = decode.generate(gpt, tokenizer, prompt, 60, temperature=0)
    fast = decode.generate(gpt, tokenizer, prompt, 60, temperature=0, prompt_lookup=8)
    assert fast == plain and len(tokenizer.encode(plain)) >= 30
    ids, stats = speculative.greedy(gpt, tokenizer.encode(prompt), 60, tokenizer.stop_ids)
    assert tokenizer.decode(ids) == plain
    assert stats.accepted > 0 and stats.passes < len(ids)  # some tokens came without their own pass
    assert stats.accepted < stats.drafted  # and some drafts were rejected (the cache rolled back)
    plain_ids, plain_stats = speculative.greedy(gpt, tokenizer.encode(prompt), 60, tokenizer.stop_ids, 0)
    assert plain_ids == ids and plain_stats.passes >= len(ids) - 1


def test_speculative_greedy_slides_a_full_context_as_plain_decoding_does(tiny_llama):
    gpt, tokenizer = _chatty_llama(tiny_llama, 32)  # 90 new tokens: the context fills up three times
    prompt = "the cat sat on the mat and the cat"
    plain = decode.generate(gpt, tokenizer, prompt, 90, temperature=0)
    fast = decode.generate(gpt, tokenizer, prompt, 90, temperature=0, prompt_lookup=5)
    assert fast == plain and len(tokenizer.encode(plain)) >= 60
