"""Text generation through the real `foundry` CLI and the Python API: pretrain a tiny GPT on a few KB of
text with the default size and steps (chosen from the corpus and a seconds-long budget), then generate,
evaluate new text and refuse bad settings."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from e2e_helpers import assert_ok, assert_user_error, foundry, one_line

pytestmark = pytest.mark.slow  # trains a model
WORDS = "the king said to his son that all the world is a stage and we are players upon it"


def write_corpus(path: Path, lines: int = 400, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = WORDS.split()
    text = "\n".join(
        " ".join(rng.choice(words) for _ in range(rng.randint(4, 12))).capitalize() + "."
        for _ in range(lines)
    )
    path.write_text(text + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt")
    write_corpus(folder / "corpus.txt")
    config = {"task": "text_generation", "data": {"source": "corpus.txt"}, "train": {"max_minutes": 0.04}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    result = foundry("train", "config.yaml", cwd=folder, home=folder / "home")
    assert_ok(result)
    run = next(p for p in (folder / "home").iterdir() if (p / "metrics.json").is_file())
    return folder, run, result


def test_a_gpt_trains_on_a_text_file_with_its_size_chosen_and_reports_bits_per_byte(gpt_run):
    _, run, result = gpt_run
    chosen = one_line(result.stderr)
    for phrase in ("chosen: tokenizer", "chosen: model 2 layers", "chosen: batch_size", "chosen: max_steps"):
        assert phrase in chosen
    assert "test bits_per_byte" in result.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("val", "test"):
        m = metrics[split]
        assert 0 < m["bits_per_byte"] < 8  # better than a uniform guess over bytes
        assert m["perplexity"] == pytest.approx(2.718281828 ** m["loss"], rel=1e-6)
    history = metrics["history"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]  # it learnt
    assert (run / "model" / "chars.json").is_file() and (run / "tokens" / "train.bin").is_file()
    report = (run / "report.html").read_text()
    assert "Sample generations" in report and "Learning curves" in report


def test_generate_streams_greedy_text_and_never_prints_a_stop_sequence(gpt_run):
    folder, run, _ = gpt_run
    home = folder / "home"
    greedy = foundry(
        "generate", run, "The king", "--temperature", "0", "--max-new-tokens", "30", cwd=folder, home=home
    )
    assert_ok(greedy)
    text = greedy.stdout.rstrip("\n")
    assert len(text) == 30  # characters: one per token
    again = foundry(
        "generate", run, "The king", "--temperature", "0", "--max-new-tokens", "30", cwd=folder, home=home
    )
    assert again.stdout == greedy.stdout
    stop = text[10:13]
    stopped = foundry(
        "generate",
        run,
        "The king",
        "--temperature",
        "0",
        "--max-new-tokens",
        "30",
        "--stop",
        stop,
        cwd=folder,
        home=home,
    )
    assert_ok(stopped)
    assert stopped.stdout.rstrip("\n") == text[: text.find(stop)]

    bad = foundry("generate", run, "The king", "--temperature", "-1", cwd=folder, home=home)
    assert_user_error(bad, "temperature: -1.0 must be a number >= 0")
    bad = foundry("generate", run, "x", "--top-p", "1.5", cwd=folder, home=home)
    assert_user_error(bad, "top_p: 1.5 must be in (0, 1]")
    long = "The king said to his son " * 20
    bad = foundry("generate", run, long, "--no-truncate", cwd=folder, home=home)
    assert_user_error(bad, "prompt: 500 tokens is longer than the model's context")
    cut = foundry("generate", run, long, "--max-new-tokens", "3", cwd=folder, home=home)
    assert_ok(cut)
    assert "only its last" in cut.stderr


def test_evaluate_scores_new_text_in_bits_per_byte(gpt_run, tmp_path):
    folder, run, _ = gpt_run
    other = write_corpus(tmp_path / "other.txt", lines=60, seed=1)
    result = foundry("evaluate", run, "--data", other, "--json", cwd=folder, home=folder / "home")
    assert_ok(result)
    test = json.loads(result.stdout)["metrics"]["test"]
    trained = json.loads((run / "metrics.json").read_text())["test"]
    assert abs(test["bits_per_byte"] - trained["bits_per_byte"]) < 0.5  # the same kind of text
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01binary")
    assert_user_error(
        foundry("evaluate", run, "--data", binary, cwd=folder, home=folder / "home"), "a binary file"
    )


def test_the_python_api_generates_and_chats(gpt_run):
    import modelfoundry as mf

    _, run, _ = gpt_run
    model = mf.load(run)
    assert model.block_size == model.model.config.block_size
    whole = model.generate("The king", max_new_tokens=12, temperature=0)
    assert "".join(model.generate("The king", max_new_tokens=12, temperature=0, stream=True)) == whole
    assert model.generate("The", max_new_tokens=8, seed=1) == model.generate("The", max_new_tokens=8, seed=1)
    assert isinstance(model.chat([{"role": "user", "content": "the king"}], max_new_tokens=5, seed=0), str)


def test_tune_says_it_does_not_search_text_generation_yet(tmp_path):
    write_corpus(tmp_path / "corpus.txt", lines=20)
    config = {
        "task": "text_generation",
        "data": {"source": "corpus.txt"},
        "tune": {"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert_user_error(
        foundry("tune", "config.yaml", cwd=tmp_path, home=tmp_path / "home"),
        "foundry tune does not search it yet",
        "foundry runs compare",
    )
