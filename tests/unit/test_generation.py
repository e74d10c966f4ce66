"""The GPT, its key-value cache, sampling, tokenizers and the streaming decode loop, on tiny models."""

import pytest
import torch

from modelfoundry.errors import UserError
from modelfoundry.generation import decode
from modelfoundry.generation.kv_cache import KVCache
from modelfoundry.generation.sampling import check_settings, filter_logits, pick
from modelfoundry.generation.tokenizer import CharTokenizer, load_tokenizer, train_tokenizer
from modelfoundry.models.gpt import GPT, GPTConfig, parameter_groups

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 8


def tiny(**options):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=61, n_layer=2, n_head=4, n_embd=32, block_size=24, **options)
    return GPT(config).eval()


LLAMA_LIKE = dict(positions="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, rope_theta=100000.0)


@pytest.mark.parametrize("options", [{}, LLAMA_LIKE], ids=["gpt2-like", "llama-like"])
def test_cached_decode_gives_the_full_forward_logits_for_rows_of_different_lengths(options):
    model = tiny(**options)
    torch.manual_seed(1)
    rows = [torch.randint(0, 61, (n,)) for n in (9, 4, 13)]
    cache = KVCache.allocate(model.config, slots=4, max_len=24)
    slots = torch.tensor([2, 0, 3])  # out of order, one slot left empty
    with torch.no_grad():
        for row, slot in zip(rows, slots.tolist()):  # prefill each row into its slot, one at a time
            model(row[:-2][None], cache, torch.tensor([slot]))
        # two decode steps, all rows together: each continues its own slot at its own position
        for step in (2, 1):
            idx = torch.stack([row[-step] for row in rows])[:, None]  # (3, 1)
            logits = model(idx, cache, slots)
        for b, row in enumerate(rows):
            full = model(row[None])[0, -1]
            torch.testing.assert_close(logits[b, -1], full, atol=1e-5, rtol=1e-4)
    assert cache.lengths.tolist() == [4, 0, 9, 13]


@pytest.mark.parametrize("options", [{}, LLAMA_LIKE], ids=["gpt2-like", "llama-like"])
def test_rows_at_one_length_decode_through_the_cache_as_the_full_forward(options):
    model = tiny(**options)
    torch.manual_seed(2)
    rows = torch.randint(0, 61, (2, 12))
    cache = KVCache.allocate(model.config, slots=2, max_len=24)
    with torch.no_grad():
        full = model(rows[:, :10])
        first = model(rows[:, :5], cache)  # a prefill from position 0
        more = model(rows[:, 5:9], cache)  # four more positions after a prefix
        last = model(rows[:, 9:10], cache)  # one token
    torch.testing.assert_close(torch.cat([first, more, last], 1), full, atol=1e-5, rtol=1e-4)
    assert cache.lengths.tolist() == [10, 10]


def test_small_decoding_steps_run_on_one_thread_with_the_same_text_and_threads_restored(monkeypatch):
    model = tiny()
    tokenizer = CharTokenizer.train([TEXT])
    model.wte = torch.nn.Embedding(tokenizer.vocab_size, 32)
    model.lm_head.weight = model.wte.weight
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = decode.generate(model, tokenizer, "To be", 30, temperature=0)  # a tiny model: one thread
        assert torch.get_num_threads() == 2  # the caller's setting is back
        monkeypatch.setattr(decode, "ONE_THREAD_FLOPS", 0)  # every step on both threads
        assert decode.generate(model, tokenizer, "To be", 30, temperature=0) == one
    finally:
        torch.set_num_threads(threads)


def test_tied_embeddings_and_decay_only_on_matrices():
    model = tiny()
    assert model.lm_head.weight is model.wte.weight
    decay, no_decay = parameter_groups(model, 0.1)
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == sum(
        p.numel() for p in model.parameters()
    )
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1


def test_greedy_is_the_argmax_and_filters_keep_the_top_tokens():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, 4.0]])
    assert pick(logits, 0.0).tolist() == [1, 2]
    kept = filter_logits(logits, top_k=2).isfinite()
    assert kept.tolist() == [[False, True, True, False], [False, False, True, True]]
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert filter_logits(probs, top_p=0.8).isfinite().tolist() == [[True, True, False, False]]
    assert filter_logits(probs, top_p=0.81).isfinite().tolist() == [[True, True, True, False]]
    g = torch.Generator().manual_seed(0)
    draws = {int(pick(probs, 1.0, top_p=0.5, generator=g)[0]) for _ in range(20)}
    assert draws == {0}


@pytest.mark.parametrize(
    "settings", [dict(temperature=-0.5), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=0)], ids=str
)
def test_sampling_settings_out_of_range_are_refused(settings):
    with pytest.raises(UserError, match=next(iter(settings))):
        check_settings(**{"temperature": 1.0, "top_k": None, "top_p": None, **settings})


class Scripted:
    """A stand-in model that always predicts the next token of a script (so stop handling is exact)."""

    def __init__(self, script, vocab):
        self.script, self.vocab = script, vocab
        self.config = GPTConfig(vocab_size=vocab, n_layer=1, n_head=1, n_embd=4, block_size=64)
        self.param = torch.nn.Parameter(torch.zeros(1))
        self.training = False

    def parameters(self):
        yield self.param

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def __call__(self, idx, cache=None, slots=None):
        fed = int(cache.lengths[0]) + idx.shape[1]
        cache.lengths[0] = fed
        token = self.script[min(fed - self.prompt_length, len(self.script) - 1)]
        logits = torch.full((1, idx.shape[1], self.vocab), -1e9)
        logits[0, -1, token] = 0.0
        return logits


def scripted(tokenizer, prompt, continuation):
    model = Scripted(tokenizer.encode(continuation) + [0], tokenizer.vocab_size)
    model.prompt_length = len(tokenizer.encode(prompt))
    return model


def test_stop_sequences_are_never_half_printed():
    tokenizer = CharTokenizer.train([TEXT + "END#"])
    model = scripted(tokenizer, "Q", "to be, or not to beEND and more")
    pieces = list(decode.stream(model, tokenizer, "Q", 40, temperature=0, stop=["END", "zzz"]))
    assert "".join(pieces) == "to be, or not to be"
    assert not any("E" in p for p in pieces)  # the "E" of END was held back, then dropped
    # a held-back start that turns out not to be a stop is printed after all
    model = scripted(tokenizer, "Q", "to be, or not")
    assert decode.generate(model, tokenizer, "Q", 40, temperature=0, stop=["to bee"]) == "to be, or not"


def test_pieces_never_split_a_utf8_character():
    tokenizer = train_tokenizer("bpe", [TEXT, "naïve café 東京 😀"], 300)
    model = scripted(tokenizer, "Q", "東京 😀 café")
    pieces = list(decode.stream(model, tokenizer, "Q", 40, temperature=0))
    assert "".join(pieces) == "東京 😀 café"
    assert not any("\ufffd" in p for p in pieces)


def test_tokenizers_round_trip_and_load_from_a_package(tmp_path):
    for tokenizer in (train_tokenizer("bpe", [TEXT], 300), train_tokenizer("char", [TEXT], 0)):
        text = "whether 'tis nobler"
        assert tokenizer.decode(tokenizer.encode(text)) == text
        tokenizer.save(tmp_path)
        loaded = load_tokenizer(tmp_path)
        assert loaded.encode(text) == tokenizer.encode(text) and loaded.vocab_size == tokenizer.vocab_size
        for f in tmp_path.iterdir():
            f.unlink()
    assert CharTokenizer.train(["ab"]).decode(CharTokenizer.train(["ab"]).encode("abc")) == "ab\ufffd"
    chat = CharTokenizer.train(["a"]).apply_chat([{"role": "user", "content": "hi"}])
    assert chat == "user: hi\nassistant:"


def test_a_vocabulary_larger_than_the_corpus_supports_is_refused():
    with pytest.raises(UserError, match="vocab_size: 8,192 is more than this training text supports"):
        train_tokenizer("bpe", ["a tiny corpus"], 8192)


def test_stream_decodes_with_the_cache_as_without_it_and_handles_long_prompts():
    model = tiny()
    tokenizer = CharTokenizer.train([TEXT])
    model.wte = torch.nn.Embedding(tokenizer.vocab_size, 32)  # match the vocabulary
    model.lm_head.weight = model.wte.weight
    # 30 new tokens from a 24-position context: the cache slides once; both agree under greedy decoding
    cached = decode.generate(model, tokenizer, "To be", 30, temperature=0)
    assert len(cached) == 30
    with pytest.warns(UserWarning, match="only its last 23 tokens"):
        decode.generate(model, tokenizer, TEXT[:40], 3, temperature=0)
    with pytest.raises(UserError, match="longer than the model's context of 24"):
        decode.generate(model, tokenizer, TEXT[:40], 3, truncate=False)
    seeded = [decode.generate(model, tokenizer, "To", 10, seed=3, top_k=5) for _ in range(2)]
    assert seeded[0] == seeded[1]
    uncached = decode.generate(model, tokenizer, "To be", 10, temperature=0, use_cache=False)
    assert uncached == cached[:10]
