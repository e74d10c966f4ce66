"""Text tables larger than memory (data.streaming): one chunked Arrow pass checks, scrubs and
tokenizes the texts and appends each one's token ids to its split's int32 file; training reads
them back through a shuffle window and pads each batch to its own longest text.

Per split the scratch folder holds `ids.i32` (every token id, text after text), `starts.i64`
(where each text starts in it), `targets.i64` and `rows.i64` (each text's row in the source, for
the report). Validation and test texts are written shortest first within every chunk, so
predicting them pads little, as the in-memory path's fully sorted sets do. Training batches come
from length buckets as in memory: a window of shuffled blocks, sorted by length in slices of
BUCKET_BATCHES batches, the batches shuffled.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from modelfoundry.data import stream, tabular
from modelfoundry.data.privacy import PII_TYPES, scrub_texts
from modelfoundry.data.text import BUCKET_BATCHES, as_texts, describe_lengths, tokenize
from modelfoundry.errors import UserError

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


def prepare_streamed_text(path: Path, data, tokenizer, max_length: int, pad: int) -> dict:
    """One pass: check, scrub, split, tokenize and write every text; returns what `prepare` needs."""
    origin, text_column, label_column = str(path), data.text, data.label
    seed, val, test = data.split.seed, data.split.val, data.split.test
    scratch = stream.Scratch()
    writers = {part: _SplitWriter(scratch.path / part, sort=part != "train") for part in stream.PARTS}
    keep_first = _first_copies(path, data) if data.dedupe else None
    label_counts: dict[str, Counter] = {part: Counter() for part in stream.PARTS}
    seen: dict[str, int] = {}  # label -> a provisional code in order of appearance; sorted once all are known
    report: dict = {"source": origin, "empty_texts": 0, "truncated": 0, "warnings": []}
    pii, pii_dropped, hashes, codes, lengths, first_empty = Counter(), 0, [], [], [], 0
    try:
        for chunk in stream.read_chunks(path, texts=(text_column,), quoting=data.quoting):
            if chunk.index[0] == 0:
                tabular.check_column(chunk, text_column, "text", origin)
                tabular.check_column(chunk, label_column, "label", origin)
            labels = chunk[label_column]
            if labels.isna().any():
                i = int(chunk.index[np.argmax(labels.isna().to_numpy())])
                raise UserError(
                    f"{origin}: {tabular.row_name(origin, i)} has no label in column '{label_column}'. "
                    "Label it or remove the row."
                )
            if pd.api.types.is_float_dtype(labels) and (labels == labels.round()).all():
                labels = labels.astype(np.int64)
            labels = labels.astype(str).to_numpy()
            texts = as_texts(chunk[text_column].tolist())
            empty = np.array([t is None or not t.strip() for t in texts])
            if empty.any() and not report["empty_texts"]:
                first_empty = int(chunk.index[np.argmax(empty)])
            report["empty_texts"] += int(empty.sum())
            keep = ~empty if keep_first is None else ~empty & keep_first[chunk.index.to_numpy()]
            rows = chunk.index.to_numpy()[keep]
            scrubbed, kept, found = scrub_texts([t for t, k in zip(texts, keep) if k], data.privacy.pii)
            pii.update(found)
            pii_dropped += kept.count(False)
            kept = np.array(kept, dtype=bool)
            scrubbed = [t for t, k in zip(scrubbed, kept) if k]
            rows, labels = rows[kept], labels[keep][kept]
            if not len(rows):
                continue
            ids, truncated = tokenize(tokenizer, scrubbed, max_length)
            report["truncated"] += truncated
            u = stream._uniform(rows, seed, 0)
            part = np.where(u < test, 2, np.where(u < test + val, 1, 0)).astype(np.int8)
            hashes.append(pd.util.hash_array(np.array(scrubbed, dtype=object)))
            codes.append(part)
            lengths.append(np.array([len(t) for t in ids], dtype=np.int32))
            for code, name in enumerate(stream.PARTS):
                chosen = np.flatnonzero(part == code)
                label_counts[name].update(labels[chosen].tolist())
                provisional = np.array(
                    [seen.setdefault(label, len(seen)) for label in labels[chosen]], np.int64
                )
                writers[name].add([ids[i] for i in chosen], provisional, rows[chosen])
    except BaseException:
        for writer in writers.values():
            writer.close()
        raise
    totals = sum(label_counts.values(), Counter())
    if not totals:
        raise UserError(
            f"{origin}: every text is empty or whitespace only; check data.text names the column "
            "that holds the texts."
        )
    label_names = stream.label_names(totals, set(label_counts["train"]), origin)
    final = np.zeros(len(seen), np.int64)
    for label, code in seen.items():
        final[code] = label_names.index(label)
    for writer in writers.values():
        writer.close(final)
    row_hashes, part_codes = np.concatenate(hashes), np.concatenate(codes)
    stream.give_back_memory()
    all_lengths = torch.from_numpy(np.concatenate(lengths))
    in_part = {name: row_hashes[part_codes == i] for i, name in enumerate(stream.PARTS)}
    report.update(
        n_examples=len(part_codes),
        splits={name: len(h) for name, h in in_part.items()},
        duplicates=int(stream._repeats(row_hashes).sum()),
        leakage={
            f"{a}_{b}": int(np.isin(in_part[b], in_part[a]).sum())
            for a, b in (("train", "test"), ("train", "val"), ("val", "test"))
        },
        pii={kind: pii.get(kind, 0) for kind in PII_TYPES} if data.privacy.pii != "off" else {},
        tokens=describe_lengths(all_lengths),
        streaming={
            "chunk_rows": stream.STREAM_ROWS,
            "split": "each row's part from a seeded hash of its row "
            "number: stratified in expectation, not exactly",
        },
    )
    if report["empty_texts"]:
        report["warnings"].append(
            f"{origin}: {report['empty_texts']} empty or whitespace-only texts were skipped "
            f"(first: {tabular.row_name(origin, first_empty)})."
        )
    if keep_first is not None:
        report["dropped_duplicates"] = int((~keep_first).sum())
    if pii_dropped:
        report["pii_dropped_rows"] = pii_dropped
    if report["truncated"]:
        report["warnings"].append(
            f"{report['truncated']} texts are longer than data.max_length={max_length} "
            "tokens and were truncated."
        )
    splits = {name: StreamedTexts(scratch.path / name, pad, scratch) for name in stream.PARTS}
    test_rows = np.fromfile(scratch.path / "test" / "rows.i64", dtype=np.int64)
    # the report shows the texts as the model saw them: scrubbed again as they are read back
    display = stream.SourceRows(
        path,
        test_rows,
        [text_column],
        texts=(text_column,),
        quoting=data.quoting,
        show=lambda frame: scrub_texts(as_texts(frame[text_column].tolist()), data.privacy.pii)[0],
    )
    return {
        "splits": {name: split if len(split) else None for name, split in splits.items()},
        "labels": label_names,
        "report": report,
        "counts": totals,
        "display": display,
    }


def _first_copies(path: Path, data) -> np.ndarray:
    """data.dedupe: True for the first copy of every text (a pass hashing the raw texts)."""
    hashes = [
        pd.util.hash_array(chunk[data.text].fillna("").astype(str).to_numpy(dtype=object))
        for chunk in stream.read_chunks(path, texts=(data.text,), quoting=data.quoting)
    ]
    return ~stream._repeats(np.concatenate(hashes))


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
