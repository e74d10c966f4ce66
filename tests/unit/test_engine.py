"""The continuous-batching engine: sequences decoded together give what each gives alone, a stop sequence is
never half-sent, and a cancelled sequence frees its slot for the next."""

from __future__ import annotations

import asyncio

import torch

from modelfoundry.generation.engine import Engine, Finished, Request, TextPieces
from modelfoundry.models.gpt import GPT, GPTConfig

LETTERS = "abcdefghijklmnopqrstuvwxyz .,!?\n"


def decode(ids: list[int]) -> str:
    return "".join(LETTERS[i] for i in ids)


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=len(LETTERS), n_layer=2, n_head=2, n_embd=32, block_size=48)).eval()


async def collect(engine: Engine, request: Request) -> tuple[str, Finished]:
    sequence = engine.submit(request)
    text = ""
    while not isinstance(item := (await sequence.queue.get())[1], Finished):
        assert not isinstance(item, Exception), item
        text += item
    return text, item


def run(engine: Engine, requests: list[Request]) -> list[tuple[str, Finished]]:
    async def main():
        return await asyncio.gather(*(collect(engine, r) for r in requests))

    engine.start()
    try:
        return asyncio.run(main())
    finally:
        engine.close()


def test_four_sequences_decoded_together_give_what_each_gives_alone():
    model = tiny_gpt()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15, 16]]
    lengths = [20, 5, 40, 12]  # they end at different steps, and the third runs into the context (48)
    requests = [Request(p, n, temperature=0) for p, n in zip(prompts, lengths)]
    together = run(Engine(model, decode, eos_id=None, slots=4), requests)
    alone = [run(Engine(model, decode, eos_id=None, slots=1), [r])[0] for r in requests]
    assert together == alone
    assert [f.completion_tokens for _, f in together] == [20, 5, 40, 12]
    assert [len(text) for text, _ in together] == [20, 5, 40, 12]
    # two slots for four sequences: the last two wait for a free slot, and still give the same text
    assert run(Engine(model, decode, eos_id=None, slots=2), requests) == alone


def test_a_seeded_sampled_sequence_repeats_and_an_end_of_text_token_stops_it():
    model = tiny_gpt()
    request = Request([1, 2, 3], 30, temperature=1.0, seed=7)
    first = run(Engine(model, decode, eos_id=None, slots=2), [request, request])
    assert first[0] == first[1] and first[0] == run(Engine(model, decode, eos_id=None), [request])[0]
    sampled = first[0][0]
    at = next(i for i, c in enumerate(sampled) if i and c not in sampled[:i])  # a token not seen before
    eos = LETTERS.index(sampled[at])  # ... taken as the end of text
    text, finished = run(Engine(model, decode, eos_id=eos), [request])[0]
    assert text == sampled[:at] and finished.reason == "stop" and finished.completion_tokens == at + 1


def test_a_stop_sequence_is_never_half_sent_and_ends_the_text_before_it():
    pieces = TextPieces(decode, stop=("cat",))
    sent = [pieces.add(LETTERS.index(c)) for c in "a cabbage cat"]
    assert "".join(piece for piece, _ in sent) == "a cabbage "
    assert [stopped for _, stopped in sent] == [False] * 12 + [True]  # the 't' completes it
    assert all(not piece.endswith(("c", "ca")) for piece, _ in sent)  # held until "cab" said it was no stop


def test_text_pieces_hold_back_an_unfinished_utf8_character():
    data = "é!".encode()  # 3 bytes: the first two are one character

    def decode_bytes(ids):
        return bytes(ids).decode("utf-8", errors="replace")

    pieces = TextPieces(decode_bytes)
    assert [pieces.add(b) for b in data] == [("", False), ("é", False), ("!", False)]


def test_a_cancelled_sequence_frees_its_slot_for_the_next():
    model = tiny_gpt()
    engine = Engine(model, decode, eos_id=None, slots=1)

    async def main():
        long = engine.submit(Request([1, 2], 40, temperature=0))
        await long.queue.get()  # it runs
        engine.cancel(long)
        return await asyncio.wait_for(collect(engine, Request([3, 4], 5, temperature=0)), 30)

    engine.start()
    try:
        text, finished = asyncio.run(main())
    finally:
        engine.close()
    assert len(text) == 5 and finished.reason == "length" and engine.active == 0


def test_incremental_pieces_of_a_byte_level_bpe_add_up_to_the_whole_decoded_text():
    from modelfoundry.generation.tokenizer import train_tokenizer

    text = "Café crème, naïve — 東京 🙂 and the end.\n" * 3
    tokenizer = train_tokenizer("bpe", [text, "plain words here"], 300)
    ids = tokenizer.encode("Ünïcødé 🙂🙃 東京タワー the end")  # characters the merges never saw: byte tokens
    pieces = TextPieces(tokenizer.decode)
    sent = [pieces.add(i)[0] for i in ids]
    assert "".join(sent) + pieces.rest() == tokenizer.decode(ids)
    assert not any("\ufffd" in piece for piece in sent)  # no piece ends inside a character
