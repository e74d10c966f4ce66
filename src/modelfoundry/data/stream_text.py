"""Text tables larger than memory (data.streaming): one chunked Arrow pass checks, scrubs and
tokenizes the texts and appends each one's token ids to its split's int32 file; training reads
them back through a shuffle window and pads each batch to its own longest text. The rules are those
of the in-memory path, per chunk: labels (`validate.require_labels`, the task's `raw_targets` and
`count_targets`, its `check_targets` once all are counted), empty texts and personal data
(`text.TextRules`), the split (`stream.hashed_parts`), duplicates and leakage (`validate`); with
data.dedupe a pass before it finds the repeated texts.

Per split the scratch folder holds `ids.i32` (every token id, text after text), `starts.i64`
(where each text starts in it), `targets.i64` and `rows.i64` (each text's row in the source, for
the report). Validation and test texts are written shortest first within every chunk, so
predicting them pads little, as the in-memory path's fully sorted sets do. Training batches come
from length buckets as in memory: a window of shuffled blocks, sorted by length in slices of
BUCKET_BATCHES batches, the batches shuffled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from modelfoundry.data import stream, tabular, validate
from modelfoundry.data.privacy import scrub_texts
from modelfoundry.data.text import (
    BUCKET_BATCHES,
    TextRules,
    as_texts,
    describe_lengths,
    note_truncated,
    tokenize,
)

FILES = ("ids.i32", "starts.i64", "targets.i64", "rows.i64")  # per split


class StreamedTexts:
    """The TextData interface (len, targets, inputs, batches, to) over a split's scratch files."""

    def __init__(self, folder: Path, pad: int, scratch: stream.Scratch, device: torch.device | None = None):
        self.folder, self.pad = folder, pad
        self.scratch = scratch  # the files live as long as any split (or a copy on another device) does
        self.device = device or torch.device("cpu")
        self.rows = (folder / "targets.i64").stat().st_size // 8
        self.tokens = (folder / "ids.i32").stat().st_size // 4

    def __len__(self) -> int:
        return self.rows

    @property
    def targets(self) -> torch.Tensor:
        return torch.from_numpy(np.fromfile(self.folder / "targets.i64", dtype=np.int64)).to(self.device)

    @property
    def inputs(self) -> torch.Tensor:
        """The median-length text of the first block as a batch of one: a typical example, for FLOP counts."""
        texts, _ = self._read(0, min(self.rows, stream.BLOCK_ROWS))
        median = sorted(range(len(texts)), key=lambda i: len(texts[i]))[len(texts) // 2]
        return self._pad([texts[median]])

    def to(self, device: torch.device) -> StreamedTexts:
        return StreamedTexts(self.folder, self.pad, self.scratch, device)

    def _read(self, start: int, stop: int) -> tuple[list[np.ndarray], np.ndarray]:
        starts = _read_range(
            self.folder / "starts.i64", np.int64, start, stop + 1 if stop < self.rows else stop
        )
        end = starts[-1] if stop < self.rows else self.tokens
        bounds = np.append(starts[: stop - start], end) - starts[0]
        ids = _read_range(self.folder / "ids.i32", np.int32, int(starts[0]), int(end))
        texts = [ids[bounds[i] : bounds[i + 1]] for i in range(stop - start)]
        return texts, _read_range(self.folder / "targets.i64", np.int64, start, stop)

    def _pad(self, texts: list[np.ndarray]) -> torch.Tensor:
        batch = torch.full((len(texts), max(len(t) for t in texts)), self.pad, dtype=torch.long)
        for i, t in enumerate(texts):
            batch[i, : len(t)] = torch.from_numpy(t.astype(np.int64))
        return batch.to(self.device, non_blocking=True)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
        if not shuffle:
            for start in range(0, self.rows, batch_size):
                texts, targets = self._read(start, min(start + batch_size, self.rows))
                yield self._pad(texts), torch.from_numpy(targets).to(self.device)
            return
        blocks = torch.randperm(-(-self.rows // stream.BLOCK_ROWS), generator=generator).tolist()
        for w in range(0, len(blocks), stream.WINDOW_BLOCKS):
            texts, targets = [], []
            for b in blocks[w : w + stream.WINDOW_BLOCKS]:
                t, y = self._read(b * stream.BLOCK_ROWS, min((b + 1) * stream.BLOCK_ROWS, self.rows))
                texts += t
                targets.append(y)
            targets = np.concatenate(targets)
            lengths = torch.tensor([len(t) for t in texts])
            order = torch.randperm(len(texts), generator=generator)
            chunk, batches = batch_size * BUCKET_BATCHES, []
            for start in range(0, len(order), chunk):
                part = order[start : start + chunk]
                batches += list(part[torch.argsort(lengths[part], stable=True)].split(batch_size))
            for b in torch.randperm(len(batches), generator=generator).tolist():
                index = batches[b].tolist()
                yield self._pad([texts[i] for i in index]), torch.from_numpy(targets[index]).to(self.device)


def _read_range(path: Path, dtype, start: int, stop: int) -> np.ndarray:
    size = np.dtype(dtype).itemsize
    with open(path, "rb") as f:
        f.seek(start * size)
        return np.fromfile(f, dtype=dtype, count=max(stop - start, 0))


def prepare_streamed_text(path: Path, data, task, tokenizer, max_length: int, pad: int) -> dict:
    """One pass (two with data.dedupe): check, scrub, split, tokenize and write every text; returns what
    `prepare` needs. `task` reads, counts and checks the labels."""
    origin = str(path)
    report: dict = {"source": origin, "warnings": []}
    repeated = _repeated_texts(path, data, task, report) if data.dedupe else None
    scratch = stream.Scratch()
    writers = {part: _SplitWriter(scratch.path / part, sort=part != "train") for part in stream.PARTS}
    rules = TextRules(data.privacy.pii, origin)
    seen: dict[str, int] = {}  # label -> a provisional code in order of appearance; sorted once all are known
    counts, truncated, hashes, codes, lengths = None, 0, [], [], []
    try:
        for rows, texts, labels in _clean_chunks(path, data, task, rules):
            if repeated is not None:
                first = ~repeated[rows]
                rows, texts, labels = rows[first], [t for t, f in zip(texts, first) if f], labels[first]
            if not len(rows):
                continue
            ids, cut = tokenize(tokenizer, texts, max_length)
            truncated += cut
            part = stream.hashed_parts(rows, data.split)
            hashes.append(pd.util.hash_array(np.array(texts, dtype=object)))
            codes.append(part)
            lengths.append(np.array([len(t) for t in ids], dtype=np.int32))
            counts = task.count_targets(labels, stream.part_names(part), counts)
            for code, name in enumerate(stream.PARTS):
                chosen = np.flatnonzero(part == code)
                provisional = np.array(
                    [seen.setdefault(label, len(seen)) for label in labels[chosen]], np.int64
                )
                writers[name].add([ids[i] for i in chosen], provisional, rows[chosen])
    except BaseException:
        for writer in writers.values():
            writer.close()
        raise
    rules.finish(report)
    label_names, _ = task.check_targets(counts or {}, origin, data, report)
    final = np.zeros(len(seen), np.int64)
    for label, code in seen.items():
        final[code] = label_names.index(label)
    for writer in writers.values():
        writer.close(final)
    row_hashes, part_codes = np.concatenate(hashes), np.concatenate(codes)
    stream.give_back_memory()
    if repeated is None:
        validate.drop_duplicates(row_hashes, False, report)
    validate.report_split(
        report, row_hashes, {name: np.flatnonzero(part_codes == i) for i, name in enumerate(stream.PARTS)}
    )
    report.update(
        n_examples=len(part_codes),
        tokens=describe_lengths(torch.from_numpy(np.concatenate(lengths))),
        streaming={"chunk_rows": stream.STREAM_ROWS, "split": stream.SPLIT},
    )
    note_truncated(report, truncated, max_length)
    splits = {name: StreamedTexts(scratch.path / name, pad, scratch) for name in stream.PARTS}
    test_rows = np.fromfile(scratch.path / "test" / "rows.i64", dtype=np.int64)
    # the report shows the texts as the model saw them: scrubbed again as they are read back
    display = stream.SourceRows(
        path,
        test_rows,
        [data.text],
        texts=(data.text,),
        quoting=data.quoting,
        show=lambda frame: scrub_texts(as_texts(frame[data.text].tolist()), data.privacy.pii)[0],
    )
    return {
        "splits": {name: split if len(split) else None for name, split in splits.items()},
        "labels": label_names,
        "report": report,
        "display": display,
    }


def _clean_chunks(path: Path, data, task, rules: TextRules):
    """Per chunk: (row numbers, texts, labels) of the texts that `rules` keep, scrubbed; labels as the task
    reads them. A row without a label is an error naming it."""
    origin = str(path)
    for chunk in stream.read_chunks(path, texts=(data.text,), quoting=data.quoting):
        if chunk.index[0] == 0:
            tabular.check_column(chunk, data.text, "text", origin)
            tabular.check_column(chunk, data.label, "label", origin)
        validate.require_labels(chunk[data.label], origin)
        labels = task.raw_targets(chunk[data.label], origin)
        texts, labels, rows = rules(as_texts(chunk[data.text].tolist()), labels, chunk.index.to_numpy())
        yield rows, texts, labels


def _repeated_texts(path: Path, data, task, report: dict) -> np.ndarray:
    """data.dedupe: a pass hashing every text as the model sees it (kept and scrubbed), so that the main pass
    writes only first copies, as the in-memory path keeps (validate.drop_duplicates counts them). True for a
    repeat, by row number. Scrubbing twice is the price of holding no text."""
    rows, hashes = [], []
    for kept, texts, _ in _clean_chunks(path, data, task, TextRules(data.privacy.pii, str(path))):
        rows.append(kept)
        hashes.append(pd.util.hash_array(np.array(texts, dtype=object)))
    rows = np.concatenate(rows)
    keep = validate.drop_duplicates(np.concatenate(hashes), True, report)
    repeated = np.zeros(int(rows.max()) + 1 if len(rows) else 0, bool)
    repeated[rows[~keep]] = True
    return repeated


class _SplitWriter:
    """Appends texts to a split's files; `sort` buffers a chunk's worth and writes it shortest first.
    Targets are written as provisional codes and renumbered in `close`, once every label is known."""

    def __init__(self, folder: Path, sort: bool):
        folder.mkdir(parents=True)
        self.folder = folder
        # Open across add() calls, closed by close().
        self.files = {name: open(folder / name, "wb") for name in (*FILES[:2], "targets.tmp", "rows.i64")}  # noqa: SIM115
        self.sort, self.tokens, self.pending = sort, 0, []

    def add(self, ids: list[torch.Tensor], codes: np.ndarray, rows: np.ndarray) -> None:
        self.pending += list(zip(ids, codes, rows))
        if not self.sort or len(self.pending) >= stream.STREAM_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        if self.sort:
            self.pending.sort(key=lambda item: len(item[0]))
        ids, codes, rows = zip(*self.pending)
        lengths = np.array([len(t) for t in ids], dtype=np.int64)
        starts = self.tokens + np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.files["ids.i32"].write(torch.cat(ids).to(torch.int32).numpy().tobytes())
        self.files["starts.i64"].write(starts.astype(np.int64).tobytes())
        self.files["targets.tmp"].write(np.asarray(codes, dtype=np.int64).tobytes())
        self.files["rows.i64"].write(np.asarray(rows, dtype=np.int64).tobytes())
        self.tokens += int(lengths.sum())
        self.pending = []

    def close(self, final: np.ndarray | None = None) -> None:
        """Write what is pending, then the targets: `final[provisional code]` is the label's index."""
        if final is not None:
            self._flush()
        for f in self.files.values():
            f.close()
        if final is None:
            return
        with (
            open(self.folder / "targets.tmp", "rb") as source,
            open(self.folder / "targets.i64", "wb") as target,
        ):
            while len(codes := np.fromfile(source, dtype=np.int64, count=1 << 20)):
                target.write(final[codes].tobytes())
        (self.folder / "targets.tmp").unlink()
