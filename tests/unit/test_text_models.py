"""Text classifiers from scratch: logits per class, padding never matters, they learn, bad options are
named."""

from __future__ import annotations

import pytest
import torch

from modelfoundry.models.rnn import build_gru, build_lstm
from modelfoundry.models.transformer import build_transformer

VOCAB, PAD, MAX_LENGTH, CLASSES = 50, 0, 16, 3
TINY = {
    "lstm-max": (build_lstm, {"embed_dim": 16, "hidden": 16, "layers": 2, "pooling": "max"}),
    "lstm-mean": (build_lstm, {"embed_dim": 16, "hidden": 16, "layers": 2, "pooling": "mean"}),
    "lstm-last": (build_lstm, {"embed_dim": 16, "hidden": 16, "layers": 2, "pooling": "last"}),
    "gru-last-one-way": (
        build_gru,
        {"embed_dim": 16, "hidden": 16, "pooling": "last", "bidirectional": False},
    ),
    "gru-max": (build_gru, {"embed_dim": 16, "hidden": 16, "layers": 2, "pooling": "max"}),
    "transformer-sinusoidal-mean": (build_transformer, {"width": 16, "depth": 2, "heads": 2}),
    "transformer-learned-cls": (
        build_transformer,
        {"width": 16, "depth": 2, "heads": 2, "positions": "learned", "pooling": "cls"},
    ),
}


def build(name: str, num_classes: int = CLASSES, **overrides):
    builder, options = TINY[name]
    return builder((MAX_LENGTH,), num_classes, VOCAB, PAD, **{**options, **overrides})


def padded(texts: list[list[int]], length: int) -> torch.Tensor:
    """Right-pad each text with PAD to `length` tokens: (B, length)."""
    return torch.tensor([text + [PAD] * (length - len(text)) for text in texts])


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models run fastest on one thread, and the same on every machine
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(TINY))
def test_logits_per_class_and_every_parameter_learns(name):
    torch.manual_seed(0)
    model = build(name)
    logits = model(padded([[5, 6, 7], [8, 9, 10, 11, 12], [13]], 7))
    assert logits.shape == (3, CLASSES)
    logits.square().sum().backward()
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert not missing, f"no gradient reaches {missing}"
    assert model.head.out_features == CLASSES  # the optimizer may give the head its own learning rate


@pytest.mark.parametrize("name", sorted(TINY))
def test_padding_does_not_change_the_logits(name):
    torch.manual_seed(0)
    model = build(name).eval()
    texts = [[5, 6, 7, 8, 9], [10, 11], [12]]
    short, long = model(padded(texts, 5)), model(padded(texts, 12))
    torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)
    alone = model(padded(texts[1:2], 2))  # the same text in a batch of its own
    torch.testing.assert_close(alone, short[1:2], atol=1e-5, rtol=1e-5)


def test_an_empty_text_gives_finite_logits():
    for name in TINY:
        model = build(name).eval()
        assert torch.isfinite(model(padded([[], [5, 6]], 3))).all(), name


def toy_task(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Label 1 iff token 7 occurs in a text of 3 to 12 tokens from [1, VOCAB); half the texts have one."""
    texts, labels = [], []
    for i in range(n):
        length = int(torch.randint(3, 13, ()))
        text = [t for t in torch.randint(1, VOCAB, (length,)).tolist() if t != 7] or [1]
        if i % 2:
            text.insert(int(torch.randint(0, len(text) + 1, ())), 7)
        texts.append(text)
        labels.append(i % 2)
    return padded(texts, max(map(len, texts))), torch.tensor(labels)


@pytest.mark.parametrize("name", sorted(TINY))
def test_learns_whether_a_token_occurs(name):
    torch.manual_seed(0)
    ids, labels = toy_task()
    model = build(name, num_classes=2, dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(ids), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    accuracy = (model.eval()(ids).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.9, f"{name} reached only {accuracy:.2f} training accuracy"


@pytest.mark.parametrize(
    ("builder", "options", "message"),
    [
        (build_lstm, {"pooling": "maxx"}, r"pooling 'maxx' is not one of max, mean, last"),
        (build_gru, {"hidden": 0}, r"hidden 0 must be a positive whole number"),
        (build_transformer, {"width": 100, "heads": 3}, r"width 100 is not divisible by heads 3: pick heads"),
        (
            build_transformer,
            {"positions": "rotary"},
            r"positions 'rotary'.*must be 'sinusoidal' or 'learned'",
        ),
        (build_transformer, {"pooling": "max"}, r"pooling 'max' is not one of mean, cls"),
    ],
)
def test_bad_options_name_the_option_and_the_fix(builder, options, message):
    with pytest.raises(ValueError, match=message):
        builder((MAX_LENGTH,), CLASSES, VOCAB, PAD, **options)


@pytest.mark.parametrize("builder", [build_lstm, build_transformer])
def test_bad_vocabulary_or_shape_is_named(builder):
    with pytest.raises(ValueError, match=r"pad_id 50 is outside the vocabulary of size 50"):
        builder((MAX_LENGTH,), CLASSES, VOCAB, 50)
    with pytest.raises(ValueError, match=r"input_shape \(1, 8, 8\)"):
        builder((1, 8, 8), CLASSES, VOCAB, PAD)


def test_transformer_names_texts_longer_than_max_length():
    model = build("transformer-learned-cls")
    with pytest.raises(ValueError, match=f"got 20 tokens.*max_length {MAX_LENGTH}: truncate"):
        model(torch.ones(1, 20, dtype=torch.long))
