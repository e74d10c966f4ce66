"""Tables larger than memory: read in chunks with Arrow, encoded once to a scratch file, then
streamed back in shuffled blocks, so a training run's memory stays flat as the rows grow.

Two passes over the source, one chunk (STREAM_ROWS rows) at a time:
1. validate and count: labels, empty cells, infinities, duplicate and leaking rows (an 8-byte hash
   per row), each row's split from a seeded hash of its row number, and a uniform sample of at most
   SAMPLE_ROWS training rows, which the encoder (medians, means, categories) is fitted on;
2. encode every row with that encoder and append it to its split's float32 file.

Training then reads each epoch's rows through a shuffle window: the file's blocks of BLOCK_ROWS rows
in a seeded random order, WINDOW_BLOCKS blocks at a time, their rows shuffled together. Files are read
with plain reads, not memory-mapped, so pages of the data never count against the process.

What differs from in-memory tables (said in the data report): the split is stratified in expectation,
not exactly (each row falls in a part by a hash, whatever its class), and the encoder sees a sample
of the training rows, not all of them.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import weakref
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from modelfoundry import runfiles
from modelfoundry.data import tabular, validate
from modelfoundry.errors import UserError

STREAM_ROWS = 65_536  # rows per chunk read from the source
SAMPLE_ROWS = 200_000  # training rows the encoder is fitted on
AUTO_BYTES = 1 << 30  # data.streaming: auto streams table files from this size up
BLOCK_ROWS = 4_096  # rows per block of the shuffled reading order
WINDOW_BLOCKS = 16  # blocks whose rows are shuffled together (65,536 rows)
PARTS = ("train", "val", "test")
CSV_BLOCK_BYTES = (
    1 << 20
)  # bytes Arrow parses at a time (CSV, JSONL): its read-ahead holds ~35 of them; the first types the columns


def wanted(setting: bool | str, path: Path) -> bool:
    """data.streaming: true, false or auto (files of AUTO_BYTES and more)."""
    if setting == "auto":
        return path.stat().st_size >= AUTO_BYTES
    return bool(setting)


def read_chunks(
    path: Path, rows: int = STREAM_ROWS, texts: tuple[str, ...] = (), quoting: bool = True
) -> Iterator[pd.DataFrame]:
    """The table in chunks of about `rows` rows, each with its 0-based row numbers as the index.

    `texts`: free-text columns, read as strings. Then, as when reading a text table whole, only
    truly empty cells are missing ("NA" and "null" are words) and bytes that are not UTF-8 are an
    error naming the line; `quoting` False reads quote characters as text (CSV/TSV).
    """
    import pyarrow as pa

    suffix, start, pool = path.suffix.lower(), 0, memory_pool()
    try:
        for batch in _record_batches(path, suffix, rows, texts, quoting, pool):
            frame = batch.to_pandas(memory_pool=pool)
            frame.columns = [str(c) for c in frame.columns]
            frame.index = pd.RangeIndex(start, start + len(frame))
            start += len(frame)
            if len(frame):
                yield frame
    except pa.ArrowInvalid as exc:
        message = str(exc)
        if "utf8" in message.lower() or "utf-8" in message.lower():
            tabular.check_utf8(path)  # names the line and the bytes
        if "empty" in message.lower() and start == 0 and path.stat().st_size == 0:
            raise UserError(
                f"{path}: the file is empty. Add a header row and at least one data row."
            ) from None
        hint = (
            " With data.streaming a column's type comes from the file's first rows: make every value of a "
            "number column a number (or empty), or set data.streaming: false."
            if "conversion" in message
            else ""
        )
        raise UserError(f"{path}: could not be read as {suffix[1:]}: {message.rstrip('.')}.{hint}") from None
    if start == 0:
        raise UserError(f"{path}: the table has a header but no data rows.")


def memory_pool():
    """Arrow's jemalloc pool, set to hand freed memory back at once, as the process's default, where this
    pyarrow has it: the usual default (mimalloc) keeps the blocks it parsed, some 300 MB per million
    rows, which would make memory grow with the file after all."""
    import pyarrow as pa

    try:
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(0)
        pa.set_memory_pool(pool)  # for the buffers Arrow allocates without being handed a pool, too
        return pool
    except (NotImplementedError, pa.ArrowNotImplementedError):
        return pa.default_memory_pool()


def give_back_memory() -> None:
    """Return the C heap's free pages to the system (glibc only; elsewhere nothing): after a pass over a
    big file, pandas' freed chunk buffers would otherwise count as this process's memory for the rest of
    it."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _record_batches(
    path: Path, suffix: str, rows: int, texts: tuple[str, ...] = (), quoting: bool = True, pool=None
):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    if suffix in (".parquet", ".pq"):
        yield from pq.ParquetFile(path).iter_batches(batch_size=rows)  # uses the default pool, set above
    elif suffix in (".csv", ".tsv"):
        parse = pacsv.ParseOptions(
            delimiter="\t" if suffix == ".tsv" else ",", quote_char='"' if quoting else False
        )
        words = (
            {"null_values": [""], "strings_can_be_null": True} if texts else {}
        )  # "NA" is a word in a text
        first = pacsv.open_csv(
            path,
            parse_options=parse,
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in texts}, **words),
            memory_pool=pool,
        )
        # whole numbers in the first block may meet fractions later: read every number column as float
        types = {f.name: "float64" for f in first.schema if str(f.type).startswith(("int", "uint"))}
        types |= {c: pa.string() for c in texts if c in first.schema.names}
        first.close()
        names = first.schema.names
        reader = pacsv.open_csv(
            path,
            parse_options=parse,
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            convert_options=pacsv.ConvertOptions(column_types=types, **words),
            memory_pool=pool,
        )
        try:
            yield from _rebatch(reader, rows, pool)
        except (
            pa.ArrowInvalid
        ) as exc:  # "In CSV column #3: CSV conversion error to double: invalid value 'x'"
            found = re.search(r"column #(\d+): .*invalid value '(.*)'", str(exc))
            if not found:
                raise
            column, value = names[int(found.group(1))], found.group(2)
            raise UserError(
                f"{path}: column '{column}' holds numbers in the file's first rows and {value!r} further "
                "down. Streaming (data.streaming) types each column from the first rows: make every "
                "value of that column a number (or empty), or set data.streaming: false to read the "
                "whole file first."
            ) from None
    elif suffix in (".jsonl", ".json"):
        schema = (
            pajson.ParseOptions(
                explicit_schema=pa.schema([(c, pa.string()) for c in texts]),
                unexpected_field_behavior="infer",
            )
            if texts
            else None
        )
        yield from _rebatch(
            pajson.open_json(
                path,
                read_options=pajson.ReadOptions(block_size=CSV_BLOCK_BYTES),
                parse_options=schema,
                memory_pool=pool,
            ),
            rows,
            pool,
        )
    else:
        raise UserError(
            f"{path}: unsupported table format '{suffix}'. "
            f"Use one of {', '.join(sorted(tabular.TABLE_SUFFIXES))}."
        )


def _rebatch(reader, rows: int, pool=None):
    """Arrow readers cut by bytes; hand on batches of about `rows` rows."""
    import pyarrow as pa

    pending, count = [], 0
    for batch in reader:
        pending.append(batch)
        count += batch.num_rows
        if count >= rows:
            yield pa.Table.from_batches(pending).combine_chunks(memory_pool=pool).to_batches()[0]
            pending, count = [], 0
    if pending:
        yield pa.Table.from_batches(pending).combine_chunks(memory_pool=pool).to_batches()[0]


def _uniform(rows: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """A uniform number in [0, 1) per row number, fixed by (seed, stream): splitmix64."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + np.uint64((seed * 0x9E3779B1 + stream * 0x85EBCA77) & (2**64 - 1))
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


class StreamedTable:
    """The ArrayData interface (len, targets, batches, to) over a float32 file of encoded rows."""

    def __init__(
        self, features: Path, targets: Path, width: int, scratch: Scratch, device: torch.device | None = None
    ):
        self.features_path, self.targets_path, self.width = features, targets, width
        self.scratch = scratch  # the files live as long as any split (or a copy on another device) does
        self.device = device or torch.device("cpu")
        self.rows = targets.stat().st_size // 8

    def __len__(self) -> int:
        return self.rows

    @property
    def targets(self) -> torch.Tensor:
        return torch.from_numpy(np.fromfile(self.targets_path, dtype=np.int64)).to(self.device)

    def to(self, device: torch.device) -> StreamedTable:
        return StreamedTable(self.features_path, self.targets_path, self.width, self.scratch, device)

    def _read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        count = stop - start
        with open(self.features_path, "rb") as f:
            f.seek(start * self.width * 4)
            x = np.fromfile(f, dtype=np.float32, count=count * self.width).reshape(count, self.width)
        with open(self.targets_path, "rb") as f:
            f.seek(start * 8)
            y = np.fromfile(f, dtype=np.int64, count=count)
        return x, y

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
        if not shuffle:
            for start in range(0, self.rows, batch_size):
                yield self._tensors(*self._read(start, min(start + batch_size, self.rows)))
            return
        blocks = torch.randperm(-(-self.rows // BLOCK_ROWS), generator=generator).tolist()
        carry_x, carry_y = np.zeros((0, self.width), np.float32), np.zeros(0, np.int64)
        for w in range(0, len(blocks), WINDOW_BLOCKS):
            parts = [
                self._read(b * BLOCK_ROWS, min((b + 1) * BLOCK_ROWS, self.rows))
                for b in blocks[w : w + WINDOW_BLOCKS]
            ]
            x = np.concatenate([carry_x] + [p[0] for p in parts])
            y = np.concatenate([carry_y] + [p[1] for p in parts])
            order = torch.randperm(len(y), generator=generator).numpy()
            x, y = x[order], y[order]
            whole = len(y) // batch_size * batch_size
            for start in range(0, whole, batch_size):
                yield self._tensors(x[start : start + batch_size], y[start : start + batch_size])
            carry_x, carry_y = x[whole:], y[whole:]
        if len(carry_y):
            yield self._tensors(carry_x, carry_y)

    def _tensors(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device), torch.from_numpy(y).to(self.device)


class SourceRows:
    """Rows of the source file by row number, read back only when asked: what the report shows of the test
    split. `show` turns the selected rows (a frame of `columns`) into what is shown: records by default."""

    def __init__(self, path: Path, row_numbers: np.ndarray, columns: list[str], show=None, **read):
        self.path, self.row_numbers, self.columns, self.read = path, row_numbers, columns, read
        self.show = show or (lambda frame: frame.to_dict(orient="records"))

    def __len__(self) -> int:
        return len(self.row_numbers)

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.take([i % len(self)])[0]

    def __iter__(self):
        return iter(self.take(range(len(self))))

    def take(self, indices) -> list:
        """Any number of rows in one pass over the source, stopping once all are found."""
        wanted: dict[int, list[int]] = {}
        for n, i in enumerate(indices):
            wanted.setdefault(int(self.row_numbers[i]), []).append(n)
        found, missing = [None] * sum(map(len, wanted.values())), len(wanted)
        for chunk in read_chunks(self.path, **self.read):
            hits = chunk.index.intersection(list(wanted))
            for row, value in zip(hits, self.show(chunk.loc[hits, self.columns])):
                for n in wanted[row]:
                    found[n] = value
            missing -= len(hits)
            if not missing:
                break
        return found


class Scratch:
    """A folder of encoded data beside the runs; deleted once no split reading from it is left."""

    def __init__(self):
        root = runfiles.scratch_root()
        root.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="foundry-stream-", dir=root))
        weakref.finalize(self, shutil.rmtree, self.path, True)


def prepare_streamed(path: Path, data, origin: str) -> dict:
    """Both passes; returns the pieces `prepare` builds a Prepared from."""
    split_cfg = data.split
    if split_cfg.val + split_cfg.test >= 1:
        raise UserError(f"data.split: val {split_cfg.val} + test {split_cfg.test} leave no training rows.")
    counts, report, sample, features = _first_pass(path, data, origin)
    encoder = tabular.TableEncoder().fit(sample[features], counts["ignored_columns"])
    fitted_rows = len(sample)
    del sample
    give_back_memory()
    names = counts["label_names"]
    scratch = Scratch()
    files = {part: (scratch.path / f"{part}.f32", scratch.path / f"{part}.i64") for part in PARTS}
    # Closed in the finally below.
    handles = {part: (open(files[part][0], "wb"), open(files[part][1], "wb")) for part in PARTS}  # noqa: SIM115
    codes = counts["codes"]
    try:
        for chunk in read_chunks(path):
            chunk, labels = _clean(chunk, data, origin, count=None)
            keep = codes[chunk.index.to_numpy()] >= 0
            chunk, labels = chunk[keep], labels[keep]
            x = encoder.transform(chunk[features], origin)
            y = pd.Categorical(labels, categories=names).codes.astype(np.int64)
            part_codes = codes[chunk.index.to_numpy()]
            for code, part in enumerate(PARTS):
                mask = part_codes == code
                handles[part][0].write(np.ascontiguousarray(x[mask]).tobytes())
                handles[part][1].write(y[mask].tobytes())
    finally:
        for f, g in handles.values():
            f.close()
            g.close()
    width = len(encoder.feature_names)
    splits = {part: StreamedTable(*files[part], width, scratch) for part in PARTS}
    holder = {part: (splits[part] if len(splits[part]) else None) for part in PARTS}
    give_back_memory()
    report.update(
        streaming={
            "chunk_rows": STREAM_ROWS,
            "encoder_fitted_on_rows": fitted_rows,
            "split": "each row's part from a seeded hash of its row number: "
            "stratified in expectation, not exactly",
        }
    )
    test_rows = np.flatnonzero(codes == PARTS.index("test"))
    return {
        "splits": holder,
        "labels": names,
        "width": width,
        "encoder": encoder,
        "report": report,
        "counts": counts["label_counts"],
        "display": SourceRows(path, test_rows, features),
    }


def _clean(chunk: pd.DataFrame, data, origin: str, count: dict | None):
    """Drop unlabeled rows, normalise labels to strings; `count` collects what was dropped."""
    tabular.check_column(chunk, data.label, "label", origin)
    unlabeled = chunk[data.label].isna()
    if count is not None:
        count["dropped_unlabeled_rows"] += int(unlabeled.sum())
    chunk = chunk[~unlabeled]
    labels = chunk[data.label]
    if pd.api.types.is_float_dtype(labels) and (labels == labels.round()).all():
        labels = labels.astype(np.int64)
    return chunk, labels.astype(str).to_numpy()


def label_names(totals: Counter, trained: set, origin: str) -> list[str]:
    """The classes in order; every one must have reached the training split."""
    names = validate.sorted_labels(totals)
    if len(names) < 2:
        raise UserError(
            f"{origin}: only one class ({names[0]!r}) in the labels; a classifier needs at least two."
        )
    untrained = sorted(set(totals) - trained)
    if untrained:
        raise UserError(
            f"{origin}: class(es) {', '.join(map(repr, untrained[:5]))} have too few rows for any to "
            "fall in the training split (streaming splits by a hash of the row number). Add examples, "
            "remove the class, or set data.streaming: false for a stratified split."
        )
    return names


def _repeats(hashes: np.ndarray) -> np.ndarray:
    """True for every repeat of a hash seen earlier, by sorting (a hash table of every row costs ~4x more)."""
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    repeat = np.zeros(len(hashes), bool)
    repeat[order[1:]] = ordered[1:] == ordered[:-1]
    return repeat


def _first_pass(path: Path, data, origin: str):
    seed, val, test = data.split.seed, data.split.val, data.split.test
    label_counts: Counter = Counter()
    trained_labels: set = set()
    missing: Counter = Counter()
    dropped = Counter(dropped_unlabeled_rows=0)
    hashes, codes = [], []
    sample, features, ignored, rows_seen, dropped_missing = None, None, [], 0, 0
    for chunk in read_chunks(path):
        numbers = chunk.index.to_numpy()
        code = np.full(len(chunk), -1, np.int8)  # -1: not used (unlabeled, dropped for missing values)
        chunk, labels = _clean(chunk, data, origin, dropped)
        if features is None:
            features = tabular.feature_columns(chunk, data, origin)
            ignored = [c for c in chunk.columns if c not in features]  # the label, data.drop
        kept, counts = tabular.check_missing(chunk[features], data.missing, 1.0, origin)
        missing.update(counts)
        dropped_missing += len(chunk) - len(kept)
        labels = labels[chunk.index.isin(kept.index)]
        rows_seen += len(chunk)
        u = _uniform(kept.index.to_numpy(), seed, 0)
        part = np.where(u < test, 2, np.where(u < test + val, 1, 0)).astype(np.int8)
        code[np.searchsorted(numbers, kept.index.to_numpy())] = part
        codes.append(code)
        label_counts.update(labels.tolist())
        trained_labels.update(labels[part == 0].tolist())
        hashes.append(
            pd.util.hash_pandas_object(
                kept.assign(**{c: kept[c].astype(float) for c in kept.select_dtypes("number").columns}),
                index=False,
            ).to_numpy()
        )
        train = kept[part == 0].assign(_key=_uniform(kept.index.to_numpy()[part == 0], seed, 1))
        # bottom-k by a random key: a uniform sample of all training rows. Once full, only rows whose key
        # beats the largest kept one can enter, so the sample is rarely copied
        if sample is not None and len(sample) >= SAMPLE_ROWS:
            train = train[train["_key"] < sample["_key"].max()]
        if len(train):
            sample = train if sample is None else pd.concat([sample, train])
            if len(sample) > SAMPLE_ROWS:
                sample = sample.nsmallest(SAMPLE_ROWS, "_key")
    codes = np.concatenate(codes)
    row_hashes = np.concatenate(hashes)
    used = codes >= 0
    if not used.any():
        raise UserError(f"{origin}: no labeled rows with values left (data.missing: {data.missing}).")
    for column, n in missing.items():
        if data.missing == "impute" and n / rows_seen > data.max_missing_fraction:
            raise UserError(
                f"{origin}: column '{column}' is {n / rows_seen:.0%} empty, more than "
                f"data.max_missing_fraction={data.max_missing_fraction:g}. Drop the column "
                f"(data.drop: [{column}]) or raise the limit."
            )
    names = label_names(label_counts, trained_labels, origin)
    used_codes = codes[used]
    duplicates = _repeats(row_hashes)
    report = {
        "source": origin,
        "missing": dict(missing),
        "duplicates": int(duplicates.sum()),
        "n_examples": int(used.sum()),
    }
    if dropped["dropped_unlabeled_rows"]:
        report["dropped_unlabeled_rows"] = dropped["dropped_unlabeled_rows"]
    if dropped_missing:
        report["dropped_rows_with_missing"] = dropped_missing
    if data.dedupe and duplicates.any():
        codes[np.flatnonzero(used)[duplicates]] = -1
        used_codes = np.where(duplicates, -1, used_codes)
        report["dropped_duplicates"] = int(duplicates.sum())
        report["n_examples"] = int((codes >= 0).sum())
    in_part = {part: row_hashes[used_codes == i] for i, part in enumerate(PARTS)}
    report["splits"] = {part: len(h) for part, h in in_part.items()}
    report["leakage"] = {
        f"{a}_{b}": int(np.isin(in_part[b], in_part[a]).sum())
        for a, b in (("train", "test"), ("train", "val"), ("val", "test"))
    }
    if report["splits"]["train"] == 0:
        raise UserError(
            f"{origin}: no rows fell in the training split; lower data.split.val / data.split.test."
        )
    return (
        {"codes": codes, "label_names": names, "label_counts": label_counts, "ignored_columns": ignored},
        report,
        sample.drop(columns="_key"),
        features,
    )
