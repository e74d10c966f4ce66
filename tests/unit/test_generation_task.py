"""text_generation's corpus reading, splitting and bad-input messages, and its bits-per-byte arithmetic."""

import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from modelfoundry.config import load_config
from modelfoundry.errors import UserError
from modelfoundry.tasks import generation as gen

TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(200))


def data(**changes):
    base = dict(text=None, quoting=True, dedupe=False, privacy=SimpleNamespace(pii="report"))
    return SimpleNamespace(**{**base, **changes})


def test_one_file_is_split_into_contiguous_blocks_never_shuffled_lines(tmp_path):
    (tmp_path / "c.txt").write_text(TEXT)
    docs, how = gen.read_documents(data(), tmp_path / "c.txt")
    parts, blocked = gen.split_corpus(docs, 0.05, 0.05, seed=0)
    assert blocked and how == "one file"
    for name in ("val", "test"):
        assert parts[name] and all(block in TEXT and block.endswith("\n") for block in parts[name])
    assert sorted("".join(p) for p in parts.values()) != []
    assert sum(len(b) for p in parts.values() for b in p) == len(TEXT)  # nothing lost, nothing repeated
    assert gen.split_corpus(docs, 0.05, 0.05, seed=0)[0] == parts  # seeded


def test_a_folder_is_split_by_document_and_duplicates_and_empties_are_reported(tmp_path):
    for i in range(30):
        (tmp_path / f"{i:02}.txt").write_text(f"document {i} " * 5)
    (tmp_path / "30.md").write_text("document 1 " * 5)  # a duplicate of 01.txt
    (tmp_path / "31.txt").write_text("   \n")
    (tmp_path / "notes.pdf").write_bytes(b"%PDF")  # not read
    docs, how = gen.read_documents(data(), tmp_path)
    report: dict = {}
    kept = gen.check_documents(docs, how, data(), str(tmp_path), report)
    assert len(docs) == 32 and len(kept) == 31
    assert report["empty_texts"] == 1 and report["duplicates"] == 1
    assert any("exact duplicates" in w for w in report["warnings"])
    parts, blocked = gen.split_corpus(kept, 0.1, 0.1, seed=3)
    assert not blocked and {len(p) for p in parts.values()} == {3, 25}
    deduped = gen.check_documents(docs, how, data(dedupe=True), str(tmp_path), {})
    assert len(deduped) == 30


def test_personal_data_is_redacted_as_for_text_classification(tmp_path):
    (tmp_path / "c.txt").write_text("write to jane.doe@example.com today\n" * 3)
    report: dict = {}
    docs, how = gen.read_documents(data(), tmp_path / "c.txt")
    kept = gen.check_documents(docs, how, data(privacy=SimpleNamespace(pii="redact")), "c.txt", report)
    assert "[EMAIL]" in kept[0] and "@" not in kept[0] and report["pii"]["EMAIL"] == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the corpus is empty"),
        (b"  \n\n ", "the corpus is empty"),
        (b"PK\x03\x04\x00\x00binary", "a binary file (it holds NUL bytes)"),
        (b"fine\nline two \xe9t\xe9\n", "line 2, byte 10: b'\\xe9' is not valid UTF-8"),
    ],
    ids=["empty", "blank", "binary", "latin1"],
)
def test_bad_corpora_are_refused_by_file_and_line(tmp_path, content, message):
    (tmp_path / "c.txt").write_bytes(content)
    with pytest.raises(UserError, match=re.escape(message)):
        gen.check_documents(*gen.read_documents(data(), tmp_path / "c.txt"), data(), "c.txt", {})


def test_a_table_needs_its_text_column_named(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"body": "a text"}\n')
    with pytest.raises(UserError, match="data.text: .* name the column"):
        gen.read_documents(data(), tmp_path / "d.jsonl")
    docs, how = gen.read_documents(data(text="body"), tmp_path / "d.jsonl")
    assert docs == ["a text"] and how == "rows"


def config(tmp_path, **model):
    (tmp_path / "c.txt").write_text(TEXT)
    raw = {
        "task": "text_generation",
        "data": {"source": str(tmp_path / "c.txt")},
        "model": {"name": "gpt", **model},
    }
    return load_config(raw)[0]


def test_a_corpus_smaller_than_one_context_window_is_refused(tmp_path):
    task = gen.TextGeneration()
    with pytest.raises(UserError, match="fewer than one context window of model.block_size=512"):
        task._block_size(config(tmp_path, block_size=512), 300, "char", "c.txt")
    assert task._block_size(config(tmp_path), 300, "char", "c.txt") == 64  # the default shrinks to fit


def test_resuming_with_a_block_size_above_the_position_table_is_refused(tmp_path):
    (tmp_path / "choices.json").write_text(
        json.dumps({"options": {"block_size": 64}, "steps": {}, "chosen": []})
    )
    with pytest.raises(UserError, match="block_size: 128 is above the position table \\(64\\)"):
        gen.TextGeneration()._choices(config(tmp_path, block_size=128), tmp_path, True, 50, {}, 128, None)


def test_config_mistakes_name_the_key():
    raw = {"task": "text_generation", "data": {"source": "c.txt", "label": "y", "tokenizer": "bert/"}}
    with pytest.raises(UserError) as error:
        load_config({**raw, "model": {"name": "mlp"}})
    for phrase in ("data.label", "data.tokenizer: 'bert/'", "model.name: 'mlp' does not generate text"):
        assert phrase in str(error.value)
    cfg = load_config(
        {"task": "text_generation", "data": {"source": "c.txt", "tokenizer": {"type": "char"}}}
    )[0]
    assert cfg.model.name == "gpt" and cfg.train.optimizer == "adamw" and cfg.train.grad_clip == 1.0


def test_bits_per_byte_of_a_uniform_model_is_log2_vocab_over_bytes_per_token():
    class Uniform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, idx):
            return torch.zeros(*idx.shape, 16) + self.w

    tokens = np.arange(200) % 16
    windows = gen.HeldOutWindows(tokens, 32, 100, bytes_per_token=2.0)
    assert len(windows) == 6  # 199 targets in non-overlapping windows of 32
    scores = gen.score(Uniform(), windows)
    assert scores["loss"] == pytest.approx(math.log(16))
    assert scores["bits_per_byte"] == pytest.approx(4 / 2.0)
    assert scores["tokens_scored"] == 6 * 32


def test_training_windows_are_contiguous_and_shifted_by_one(tmp_path):
    tokens = gen.write_tokens(tmp_path / "t.bin", list(range(100)), vocab_size=300)
    assert tokens.dtype == np.uint16
    x, y = next(gen.RandomWindows(tokens, 8, 4).batches(4, generator=torch.Generator().manual_seed(0)))
    assert x.shape == (4, 8) and torch.equal(y, x + 1) and torch.equal(x[:, 1:], x[:, :-1] + 1)
    assert gen.write_tokens(tmp_path / "u.bin", [70_000], vocab_size=70_001).dtype == np.uint32


def test_the_default_size_is_the_largest_that_sees_20_tokens_per_parameter_and_small_corpora_stay_small(
    tmp_path,
):
    quiet = SimpleNamespace(print=lambda *args, **kwargs: None)
    raw = {"task": "text_generation", "data": {"source": str(tmp_path / "c.txt")}}
    # 2,000 steps of 64 windows of 64 tokens: 8.2M tokens, 20 per parameter for 3 x 96 (0.33M), not 4 x 128
    cfg = load_config({**raw, "train": {"max_steps": 2000, "batch_size": 64}})[0]
    options, steps, chosen = gen.choose_run(cfg, 61, 10**7, 64, quiet)
    assert (options["n_layer"], options["n_head"], options["n_embd"]) == (3, 3, 96)
    assert "model 3 layers x 3 heads x 96 wide" in chosen[0] and "20+ tokens per parameter" in chosen[0]
    assert steps == {"max_steps": 2000, "batch_size": 64, "budget_minutes": None}
    # a corpus of 10,000 tokens gets the smallest model whatever the budget
    options, _, chosen = gen.choose_run(cfg, 61, 10_000, 64, quiet)
    assert (options["n_layer"], options["n_embd"]) == (2, 64) and "the smallest" in chosen[0]
