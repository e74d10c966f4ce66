"""Tokenizers trained on the user's corpus: byte-level BPE (the `tokenizers` library) or characters.

Every tokenizer here (and LORA's wrapper of a Hugging Face tokenizer) offers `encode(text) -> ids`,
`decode(ids) -> str`, `eos_id`, `vocab_size`, `chat_template` and `apply_chat(messages) -> str`.
`<|endoftext|>` (id 0) separates documents in the token stream and ends a generation.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from modelfoundry.errors import UserError

EOS = "<|endoftext|>"
UNKNOWN = "\ufffd"  # what the char tokenizer reads a character it never saw in training as


class TextTokenizer:
    """What both tokenizers share: the chat form and saving."""

    chat_template: str | None = None
    eos_id: int | None = 0

    def apply_chat(self, messages: list[dict]) -> str:
        """The chat template when there is one; plain "role: content" lines otherwise, ending where the
        assistant's answer begins."""
        return render_chat(self.chat_template, messages)

    def save(self, folder: Path) -> None:
        for name, text in self.files().items():
            (Path(folder) / name).write_text(text, encoding="utf-8")

    def encode_documents(self, documents: Iterable[str]) -> list[int]:
        """Documents as one token stream, each followed by the end-of-text token."""
        ids: list[int] = []
        for doc in documents:
            ids += self.encode(doc)
            ids.append(self.eos_id)
        return ids


def render_chat(template: str | None, messages: list[dict]) -> str:
    if template:
        import jinja2

        return jinja2.Template(template).render(messages=messages, add_generation_prompt=True)
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines + ["assistant:"])


class CharTokenizer(TextTokenizer):
    """One token per character seen in training (nanoGPT's Shakespeare-char); others read as U+FFFD."""

    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = [EOS, UNKNOWN] + [c for c in chars if c not in (EOS, UNKNOWN)]
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        seen: Counter = Counter()
        for text in texts:
            seen.update(text)
        return cls(sorted(seen))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        index = self.index
        return [index.get(c, 1) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        chars = self.chars
        return "".join(chars[i] for i in ids if i != 0)

    def files(self) -> dict[str, str]:
        """What a model package holds of it: file name -> text."""
        return {"chars.json": json.dumps({"chars": self.chars}, ensure_ascii=False)}


class BPETokenizer(TextTokenizer):
    """Byte-level BPE (GPT-2's scheme): any text encodes, and bytes decode back exactly."""

    kind = "bpe"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer
        self.eos_id = tokenizer.token_to_id(EOS)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer)
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_documents(self, documents: Iterable[str]) -> list[int]:
        ids: list[int] = []
        docs = list(documents)
        for start in range(0, len(docs), 1000):  # encode_batch runs on the library's threads
            for enc in self.tokenizer.encode_batch(docs[start : start + 1000], add_special_tokens=False):
                ids += enc.ids
                ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def files(self) -> dict[str, str]:
        return {"tokenizer.json": self.tokenizer.to_str()}


def train_tokenizer(kind: str, texts: list[str], vocab_size: int, origin: str = "data.tokenizer"):
    """A tokenizer of `kind` ("bpe" or "char") trained on the training split's documents."""
    if kind == "char":
        return CharTokenizer.train(texts)
    tokenizer = BPETokenizer.train(texts, vocab_size)
    if tokenizer.vocab_size < vocab_size:
        raise UserError(
            f"{origin}.vocab_size: {vocab_size:,} is more than this training text supports: byte-level BPE "
            f"found only {tokenizer.vocab_size:,} tokens in it. Set data.tokenizer.vocab_size to "
            f"{max(256, tokenizer.vocab_size // 2):,} or less, or use data.tokenizer.type: char for a small "
            "corpus."
        )
    return tokenizer


def load_tokenizer(folder: Path):
    """The tokenizer saved in a model package folder."""
    folder = Path(folder)
    if (folder / "tokenizer_config.json").exists():  # a pretrained LM's own (llm/tokenizer.py)
        from modelfoundry.llm.tokenizer import HFTokenizer

        return HFTokenizer.load(folder)
    if (folder / "chars.json").exists():
        return CharTokenizer(json.loads((folder / "chars.json").read_text())["chars"])
    from tokenizers import Tokenizer

    return BPETokenizer(Tokenizer.from_file(str(folder / "tokenizer.json")))
