"""Instruction data for supervised fine-tuning: conversations -> token ids + labels, in length-bucketed
batches, or packed several to a row of the full context (`Packed`).

A file is JSONL, CSV or Parquet with `prompt` and `response` columns (one user turn and its answer; an
optional `system` column), or a `messages` column holding a list of {role, content} (multi-turn chat). The
model's chat template renders each conversation; the loss is on the assistant's tokens only (labels are
-100 on everything else). Plain `.txt` data is continued pretraining: every token is learnt, in windows of
the context length.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from modelfoundry.errors import UserError

IGNORE = -100  # the label of a token the loss skips (PyTorch's cross-entropy default)
SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".pq", ".txt")


def read_conversations(path: Path) -> list[list[dict]]:
    """Every row of an instruction file as a conversation [{role, content}, ...] ending with the assistant's
    turn. UserError naming the file, the row and the fix on anything else."""
    from modelfoundry.data.tabular import read_table, row_name

    origin = str(path)
    frame = read_table(path, text=True)
    columns = list(frame.columns)
    if "messages" in columns:
        return [_messages(v, origin, row_name(origin, i)) for i, v in enumerate(frame["messages"].tolist())]
    if "prompt" not in columns or "response" not in columns:
        raise UserError(
            f"{origin}: instruction data needs `prompt` and `response` columns, or a `messages` column "
            f"(a list of {{role, content}}); it has {', '.join(columns[:20])}. Rename the columns, or give "
            "a .txt file for continued pretraining."
        )
    system = frame["system"].tolist() if "system" in columns else [None] * len(frame)
    out = []
    for i, (prompt, response, sys) in enumerate(zip(frame["prompt"], frame["response"], system)):
        where = row_name(origin, i)
        for column, value in (("prompt", prompt), ("response", response)):
            if not isinstance(value, str) or not value.strip():
                raise UserError(
                    f"{origin}: {where}, column '{column}': "
                    + (f"{value!r} is empty or not text" if isinstance(value, str) else "missing")
                    + ". Every example needs a prompt and the response to learn; fill it in or drop the row."
                )
        turns = [{"role": "system", "content": sys}] if isinstance(sys, str) and sys.strip() else []
        out.append(turns + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])
    return out


def _messages(value, origin: str, where: str) -> list[dict]:
    """One `messages` cell checked: optional system turn, then user and assistant in turn, ending with the
    assistant; every assistant turn has text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise UserError(f"{origin}: {where}, column 'messages': not JSON ({exc}).") from None
    if hasattr(value, "tolist"):  # Parquet gives numpy arrays of dicts
        value = value.tolist()
    fix = 'write it as [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]'
    if not isinstance(value, list) or not value:
        raise UserError(f"{origin}: {where}, column 'messages': {value!r} is not a list of turns; {fix}.")
    turns = []
    for j, turn in enumerate(value):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("role"), str)
            or not isinstance(turn.get("content"), str)
        ):
            raise UserError(
                f"{origin}: {where}, messages[{j}]: {turn!r} is not a {{role, content}} object of text; "
                f"{fix}."
            )
        turns.append({"role": turn["role"], "content": turn["content"]})
    roles = [t["role"] for t in turns]
    body = roles[1:] if roles[0] == "system" else roles
    expected = ["user" if k % 2 == 0 else "assistant" for k in range(len(body))]
    if body != expected or not body or body[-1] != "assistant":
        raise UserError(
            f"{origin}: {where}, column 'messages': roles {' -> '.join(roles)} are out of order. A "
            "conversation is an optional system turn, then user and assistant turns in turn, ending with the "
            "assistant's."
        )
    for j, turn in enumerate(turns):
        if turn["role"] == "assistant" and not turn["content"].strip():
            raise UserError(
                f"{origin}: {where}, messages[{j}]: the assistant turn is empty, so there is nothing to "
                "learn. Write the answer, or drop the turn and the user turn before it."
            )
    return turns


@dataclass
class Example:
    ids: list[int]
    labels: list[int]  # the token to predict after each position (IGNORE where not learnt), shifted already


def tokenize(tokenizer, conversations: list[list[dict]], max_length: int, origin: str) -> list[Example]:
    """Token ids and next-token labels of each conversation; the assistant's tokens alone are learnt.

    The template is rendered turn by turn (up to the start of each assistant answer, then through its end),
    and each new piece is encoded on its own, so the answer's tokens are exactly known. A conversation longer
    than `max_length` is cut at its end; a prompt that alone fills the context is a UserError.
    """
    from modelfoundry.data.tabular import row_name

    out = []
    for i, turns in enumerate(conversations):
        ids, learnt, done = [], [], ""
        for k, turn in enumerate(turns):
            if turn["role"] != "assistant":
                continue
            before = tokenizer.apply_chat(turns[:k], add_generation_prompt=True)
            after = tokenizer.apply_chat(turns[: k + 1], add_generation_prompt=False)
            if not before.startswith(done) or not after.startswith(before):
                raise UserError(
                    f"{origin}: the model's chat template does not render a conversation as a prefix of its "
                    "continuation, so the answer's tokens cannot be told apart; use prompt/response data."
                )
            prompt_part = tokenizer.encode(before[len(done) :])
            answer_part = tokenizer.encode(after[len(before) :])
            ids += prompt_part + answer_part
            learnt += [False] * len(prompt_part) + [True] * len(answer_part)
            done = after
            if k == len(turns) - 1 or len(ids) >= max_length:
                break
        first_answer = learnt.index(True) if True in learnt else len(learnt)
        if first_answer >= max_length - 1:
            raise UserError(
                f"{origin}: {row_name(origin, i)}: the prompt alone is {first_answer:,} tokens, and the "
                f"context is {max_length:,}: no room is left for the answer. Shorten the prompt, or raise "
                "model.block_size (up to the model's context)."
            )
        ids, learnt = ids[:max_length], learnt[:max_length]
        # position t predicts token t+1: its label is that token when token t+1 is learnt
        labels = [ids[t + 1] if learnt[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
        out.append(Example(ids, labels))
    return out


def text_windows(tokenizer, text: str, max_length: int) -> list[Example]:
    """Continued pretraining: the text's tokens in consecutive windows of `max_length`, every one learnt."""
    ids = tokenizer.encode(text)
    if tokenizer.eos_id is not None:
        ids.append(tokenizer.eos_id)
    out = []
    for start in range(0, max(1, len(ids) - 1), max_length):
        window = ids[start : start + max_length + 1]
        if len(window) >= 2:
            out.append(Example(window[:-1], window[1:]))
    return out


def read_examples(path: Path, tokenizer, max_length: int) -> list[Example]:
    """Any instruction or text file as training examples."""
    if path.suffix.lower() == ".txt":
        from modelfoundry.data.tabular import check_utf8

        check_utf8(path)
        examples = text_windows(tokenizer, path.read_text(encoding="utf-8"), max_length)
        if not examples:
            raise UserError(f"{path}: the text file is empty; continued pretraining needs text.")
        return examples
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(
            f"{path}: pretrained_lm reads {', '.join(SUFFIXES)}; convert the file to one of them."
        )
    return tokenize(tokenizer, read_conversations(path), max_length, str(path))


class Batches:
    """Examples in length-bucketed batches: sorted by length within chunks of 50 batches, so a batch pads
    little, and the batches shuffled. Rows are right-padded (pad id, label IGNORE); causal attention never
    looks right, so padding changes no real position's output."""

    def __init__(self, examples: list[Example], pad_id: int):
        self.examples, self.pad_id = examples, pad_id

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def tokens_learnt(self) -> int:
        return sum(sum(label != IGNORE for label in e.labels) for e in self.examples)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
        """Yields (ids (B, T), labels (B, T)) long tensors."""
        n = len(self.examples)
        order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
        chunk = batch_size * 50
        groups = []
        for start in range(0, n, chunk):
            part = sorted(order[start : start + chunk], key=lambda i: len(self.examples[i].ids))
            groups += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
        if shuffle:
            groups = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
        for group in groups:
            yield self.collate([self.examples[i] for i in group])

    def collate(self, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(e.ids) for e in examples)
        ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        for row, e in enumerate(examples):
            ids[row, : len(e.ids)] = torch.tensor(e.ids)
            labels[row, : len(e.labels)] = torch.tensor(e.labels)
        return ids, labels

    def steps(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)


class Packed(Batches):
    """Examples packed into rows of up to `length` tokens (first fit, longest first), each row's examples
    kept apart: `segments` numbers the example of every position, and the model attends within an example
    only, with positions restarting at each (models.gpt.packed_attention), so each example's loss is what
    it would be alone. A row's unused end is padding (its own segment, labels IGNORE).

    Yields (ids, labels, segments) (B, T) long tensors; `len` counts rows, not examples."""

    def __init__(self, examples: list[Example], pad_id: int, length: int):
        super().__init__(examples, pad_id)
        self.length = length
        order = sorted(range(len(examples)), key=lambda i: -len(examples[i].ids))
        rows: list[list[int]] = []
        room: list[int] = []
        for i in order:
            size = len(examples[i].ids)
            row = next((r for r, free in enumerate(room) if free >= size), None)
            if row is None:
                rows.append([])
                room.append(length)
                row = len(rows) - 1
            rows[row].append(i)
            room[row] -= size
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
        n = len(self.rows)
        order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
        for start in range(0, n, batch_size):
            yield self.collate_rows([self.rows[r] for r in order[start : start + batch_size]])

    def collate_rows(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(sum(len(self.examples[i].ids) for i in row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        segments = torch.full((len(rows), width), len(self.examples), dtype=torch.long)  # padding: its own
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                e = self.examples[i]
                ids[r, at : at + len(e.ids)] = torch.tensor(e.ids)
                labels[r, at : at + len(e.labels)] = torch.tensor(e.labels)
                segments[r, at : at + len(e.ids)] = i
                at += len(e.ids)
        return ids, labels, segments
