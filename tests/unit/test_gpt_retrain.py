"""`foundry retrain` of a GPT: which served feedback becomes text to learn, and a champion of another kind
refused as model.init_from."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from modelfoundry.errors import UserError
from modelfoundry.generation.retrain import documents_of
from modelfoundry.generation.tokenizer import CharTokenizer


def row(id, **item):
    return SimpleNamespace(id=id, input=item)


def test_better_answers_and_upvoted_answers_are_learnt_after_their_prompt():
    tokenizer = CharTokenizer(list("abc"))
    rows = [
        row(1, prompt="the cat", answer=" ran", vote="down", better_answer=" sat."),
        row(2, prompt="a dog", answer=" barks.", vote="up"),
        row(3, prompt="a bird", answer=" ...", vote="down"),  # nothing to learn
        row(4, messages=[{"role": "user", "content": "hi"}], answer=" hello", vote="up"),
    ]
    documents, skipped = documents_of(rows, tokenizer)
    assert skipped == 1
    assert documents == [(1, "the cat sat."), (2, "a dog barks."), (4, "user: hi\nassistant: hello")]


def test_a_classifier_package_is_refused_as_the_start_of_a_gpt(tmp_path):
    from modelfoundry.config import load_config
    from modelfoundry.tasks.generation import champion_start

    package = tmp_path / "model"
    package.mkdir()
    (package / "model.json").write_text('{"task": "text_classification", "model": {"name": "lstm"}}')
    (package / "model.safetensors").write_bytes(b"")
    cfg, _ = load_config(
        {
            "task": "text_generation",
            "data": {"source": "c.txt"},
            "model": {"name": "gpt", "init_from": str(package)},
        }
    )
    with pytest.raises(UserError, match="text_classification lstm model; a gpt starts only from"):
        champion_start(cfg, tmp_path)


def test_a_missing_start_is_named_by_its_key(tmp_path):
    from modelfoundry.config import load_config
    from modelfoundry.tasks.generation import champion_start

    cfg, _ = load_config(
        {
            "task": "text_generation",
            "data": {"source": "c.txt"},
            "model": {"name": "gpt", "init_from": "gone"},
        }
    )
    with pytest.raises(UserError, match="model.init_from: .*gone.*no model package here"):
        champion_start(cfg, tmp_path)
