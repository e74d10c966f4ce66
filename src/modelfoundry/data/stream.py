"""Tables larger than memory: read in chunks with Arrow, encoded once to a scratch file, then
streamed back in shuffled blocks, so a training run's memory stays flat as the rows grow.

Two passes over the source, one chunk (STREAM_ROWS rows) at a time, with the rules every reader
applies (`validate.py`, and the task's for the target column):
1. validate and count: labels, empty cells, infinities, duplicate and leaking rows (an 8-byte hash
   per row), each row's split from a seeded hash of its row number, the targets per split (the task's
   `count_targets`: rows per class, or a number's mean and spread), checked once all are counted, and
   a uniform sample of at most SAMPLE_ROWS training rows, which the encoder (medians, means, categories)
   is fitted on;
2. encode every row with that encoder, and its target as the task does (a class index, or the number
   standardised with the training rows' mean and std), and append it to its split's files.
With data.dedupe a pass before them hashes every row, so that they see only first copies.

Training then reads each epoch's rows through a shuffle window: the file's blocks of BLOCK_ROWS rows
in a seeded random order, WINDOW_BLOCKS blocks at a time, their rows shuffled together. Files are read
with plain reads, not memory-mapped, so pages of the data never count against the process.

What differs from in-memory tables (said in the data report): the split is stratified in expectation,
not exactly (each row falls in a part by a hash, whatever its class or target: a regression's quantile
bins are no more kept than classes), and the encoder sees a sample of the training rows, not all of
them; so do a regression target's quantiles in the report (its mean, std and range are of every row).
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
    """The ArrayData interface (len, targets, batches, to) over a float32 file of encoded rows and a file
    of their targets: int64 class indices, or float32 standardised numbers (regression)."""

    def __init__(
        self,
        features: Path,
        targets: Path,
        width: int,
        scratch: Scratch,
        device: torch.device | None = None,
        target_dtype=np.int64,
    ):
        self.features_path, self.targets_path, self.width = features, targets, width
        self.scratch = scratch  # the files live as long as any split (or a copy on another device) does
        self.device = device or torch.device("cpu")
        self.target_dtype = np.dtype(target_dtype)
        self.rows = targets.stat().st_size // self.target_dtype.itemsize

    def __len__(self) -> int:
        return self.rows

    @property
    def targets(self) -> torch.Tensor:
        return torch.from_numpy(np.fromfile(self.targets_path, dtype=self.target_dtype)).to(self.device)

    def to(self, device: torch.device) -> StreamedTable:
        return StreamedTable(
            self.features_path, self.targets_path, self.width, self.scratch, device, self.target_dtype
        )

    def _read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        count = stop - start
        with open(self.features_path, "rb") as f:
            f.seek(start * self.width * 4)
            x = np.fromfile(f, dtype=np.float32, count=count * self.width).reshape(count, self.width)
        with open(self.targets_path, "rb") as f:
            f.seek(start * self.target_dtype.itemsize)
            y = np.fromfile(f, dtype=self.target_dtype, count=count)
        return x, y

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
        if not shuffle:
            for start in range(0, self.rows, batch_size):
                yield self._tensors(*self._read(start, min(start + batch_size, self.rows)))
            return
        blocks = torch.randperm(-(-self.rows // BLOCK_ROWS), generator=generator).tolist()
        carry_x, carry_y = np.zeros((0, self.width), np.float32), np.zeros(0, self.target_dtype)
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


def hashed_parts(rows: np.ndarray, split) -> np.ndarray:
    """The streamed readers' split (tables and texts): each row's part, 0 train, 1 val, 2 test, from a seeded
    hash of its row number, whatever its class or target: stratified in expectation (SPLIT), not exactly
    as the in-memory split is by the task's strata."""
    u = _uniform(rows, split.seed, 0)
    return np.where(u < split.test, 2, np.where(u < split.test + split.val, 1, 0)).astype(np.int8)


SPLIT = "each row's part from a seeded hash of its row number: stratified in expectation, not exactly"


def part_names(codes: np.ndarray) -> np.ndarray:
    """Part codes of `hashed_parts` -> "train" / "val" / "test", as the task counts targets per part."""
    return np.asarray(PARTS)[codes]


def prepare_streamed(path: Path, data, origin: str, task) -> dict:
    from modelfoundry.tasks.tabular import column_report

    """The passes over a table (a first one that finds duplicates with data.dedupe, then two); returns the
    pieces `prepare` builds a Prepared from. `task` reads, counts, checks and encodes the target column."""
    report: dict = {"source": origin}
    repeated = _repeated_rows(path, data, origin, task, report) if data.dedupe else None
    codes, counts, sample, features, ignored = _first_pass(path, data, origin, task, report, repeated)
    labels, target = task.check_targets(counts, origin, data, report, sample["_target"].to_numpy())
    encoder = tabular.TableEncoder().fit(
        sample[features], ignored, sample["_target"].to_numpy(), task.is_classifier, data.columns, origin
    )
    report["columns"] = column_report(encoder, ignored, data)
    report.setdefault("warnings", []).extend(encoder.warnings)
    fitted_rows = len(sample)
    del sample
    give_back_memory()
    spec, target_dtype = {"labels": labels, "target": target}, np.int64 if task.is_classifier else np.float32
    scratch = Scratch()
    files = {part: (scratch.path / f"{part}.f32", scratch.path / f"{part}.targets") for part in PARTS}
    # Closed in the finally below.
    handles = {part: (open(files[part][0], "wb"), open(files[part][1], "wb")) for part in PARTS}  # noqa: SIM115
    try:
        for chunk in read_chunks(path):
            chunk, _ = validate.drop_unlabeled(chunk, data.label, origin)
            raw = task.raw_targets(chunk[data.label], origin)  # read as in the first pass: the same rows
            part_codes = codes[chunk.index.to_numpy()]
            keep = part_codes >= 0
            x = encoder.transform(chunk[keep][features], origin)
            y = task.encode_targets(raw[keep], spec, origin).astype(target_dtype)
            for code, part in enumerate(PARTS):
                mask = part_codes[keep] == code
                handles[part][0].write(np.ascontiguousarray(x[mask]).tobytes())
                handles[part][1].write(y[mask].tobytes())
    finally:
        for f, g in handles.values():
            f.close()
            g.close()
    width = len(encoder.feature_names)
    splits = {part: StreamedTable(*files[part], width, scratch, target_dtype=target_dtype) for part in PARTS}
    give_back_memory()
    report["streaming"] = {"chunk_rows": STREAM_ROWS, "encoder_fitted_on_rows": fitted_rows, "split": SPLIT}
    return {
        "splits": {part: (splits[part] if len(splits[part]) else None) for part in PARTS},
        "labels": labels,
        "target": target,
        "width": width,
        "encoder": encoder,
        "report": report,
        "display": SourceRows(path, np.flatnonzero(codes == PARTS.index("test")), features),
    }


def _usable_rows(path: Path, data, origin: str, task, tally: Counter):
    """Per chunk: (its row numbers, the feature columns of its rows that have a label and, per data.missing,
    the values, those rows' raw targets, the feature column names). `tally` counts rows, unlabeled rows, the
    labelled ones, rows dropped for empty cells, and empty cells per column ("missing:<column>"). The
    feature names come with the file's other columns (the label, data.drop), which the model ignores."""
    features = None
    for chunk in read_chunks(path):
        numbers = chunk.index.to_numpy()
        chunk, unlabeled = validate.drop_unlabeled(chunk, data.label, origin)
        raw = task.raw_targets(chunk[data.label], origin)
        if features is None:
            features = tabular.feature_columns(chunk, data, origin)
            ignored = [c for c in chunk.columns if c not in features]
        kept, missing = tabular.check_missing(chunk[features], data.missing, 1.0, origin)
        tally.update(rows=len(numbers), unlabeled=unlabeled, labelled=len(chunk))
        tally.update(
            dropped_missing=len(chunk) - len(kept), **{f"missing:{c}": n for c, n in missing.items()}
        )
        yield numbers, kept, raw[chunk.index.isin(kept.index)], (features, ignored)


def _row_hashes(rows: pd.DataFrame) -> np.ndarray:
    """The duplicates rule's hash of each row; numbers as floats, as a column's type may change by chunk."""
    numbers = rows.select_dtypes("number").columns
    floats = rows.assign(**{c: rows[c].astype(float) for c in numbers})
    return pd.util.hash_pandas_object(floats, index=False).to_numpy()


def _repeated_rows(path: Path, data, origin: str, task, report: dict) -> np.ndarray:
    """data.dedupe: a pass hashing every usable row, so that the later passes see only first copies, as the
    in-memory path does (validate.drop_duplicates counts them). True for a repeat, by row number."""
    used, hashes = [], []
    for numbers, kept, _, _ in _usable_rows(path, data, origin, task, Counter()):
        used.append(np.isin(numbers, kept.index.to_numpy()))
        hashes.append(_row_hashes(kept))
    used = np.concatenate(used)
    keep = validate.drop_duplicates(np.concatenate(hashes), True, report)
    repeated = np.zeros(len(used), bool)
    repeated[np.flatnonzero(used)[~keep]] = True
    return repeated


def _first_pass(path: Path, data, origin: str, task, report: dict, repeated: np.ndarray | None):
    """Counts and checks; returns each row's part code (-1: not used), the targets counted per part, the
    encoder's sample of training rows (with their raw targets in `_target`) and the feature columns."""
    tally: Counter = Counter()
    counts, hashes, codes, sample, features = None, [], [], None, []
    ignored: list[str] = []
    for numbers, kept, raw, (columns, others) in _usable_rows(path, data, origin, task, tally):
        features, ignored = columns, others
        if repeated is not None:
            first = ~repeated[kept.index.to_numpy()]
            kept, raw = kept[first], raw[first]
        part = hashed_parts(kept.index.to_numpy(), data.split)
        code = np.full(len(numbers), -1, np.int8)  # -1: not used (unlabeled, empty cells, a duplicate)
        code[np.searchsorted(numbers, kept.index.to_numpy())] = part
        codes.append(code)
        counts = task.count_targets(raw, part_names(part), counts)
        hashes.append(_row_hashes(kept))
        sample = _sampled(sample, kept[part == 0].assign(_target=raw[part == 0]), data.split.seed)
    codes = np.concatenate(codes)
    used = codes >= 0
    validate.check_labelled(tally["rows"], tally["unlabeled"], data.label, origin)
    if not used.any():
        raise UserError(f"{origin}: no labeled rows with values left (data.missing: {data.missing}).")
    missing = {key.removeprefix("missing:"): n for key, n in tally.items() if key.startswith("missing:")}
    for column, n in missing.items():
        if data.missing == "impute" and n / tally["labelled"] > data.max_missing_fraction:
            raise UserError(
                f"{origin}: column '{column}' is {n / tally['labelled']:.0%} empty, more than "
                f"data.max_missing_fraction={data.max_missing_fraction:g}. Drop the column "
                f"(data.drop: [{column}]) or raise the limit."
            )
    report.update(missing=missing, n_examples=int(used.sum()))
    if tally["unlabeled"]:
        report["dropped_unlabeled_rows"] = tally["unlabeled"]
    if tally["dropped_missing"]:
        report["dropped_rows_with_missing"] = tally["dropped_missing"]
    row_hashes = np.concatenate(hashes)
    if repeated is None:
        validate.drop_duplicates(row_hashes, False, report)
    used_codes = codes[used]
    validate.report_split(
        report, row_hashes, {p: np.flatnonzero(used_codes == i) for i, p in enumerate(PARTS)}
    )
    if report["splits"]["train"] == 0:
        raise UserError(
            f"{origin}: no rows fell in the training split; lower data.split.val / data.split.test."
        )
    return codes, counts, sample.drop(columns="_key"), features, ignored


def _sampled(sample: pd.DataFrame | None, train: pd.DataFrame, seed: int) -> pd.DataFrame | None:
    """The encoder's uniform sample of at most SAMPLE_ROWS training rows, with this chunk's added: bottom-k
    by a random key per row number. Once full, only rows whose key beats the largest kept one can enter, so
    the sample is rarely copied."""
    train = train.assign(_key=_uniform(train.index.to_numpy(), seed, 1))
    if sample is not None and len(sample) >= SAMPLE_ROWS:
        train = train[train["_key"] < sample["_key"].max()]
    if len(train):
        sample = train if sample is None else pd.concat([sample, train])
        if len(sample) > SAMPLE_ROWS:
            sample = sample.nsmallest(SAMPLE_ROWS, "_key")
    return sample
