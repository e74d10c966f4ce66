"""The data rules, each written once and applied by every reader of training data: the in-memory path
(`prepare.prepare`), streamed tables (`stream.py`), streamed texts (`stream_text.py`) and lazy image
folders (`prepare.streamed_images`).

A streamed reader never holds all rows, so a rule that needs all of them is two calls: one per chunk,
which counts, and a final check on the counts. The in-memory path makes the same calls once over all
its examples. Rules about targets (how a label column becomes targets, the classes, a number's mean
and spread) are the task's: `Task.raw_targets`, `count_targets` and `check_targets` in `tasks/`; the
text rules (empty texts, personal data, truncation) are in `text.py`; the streamed split in `stream.py`.

Fatal problems raise UserError naming the file, row or column; the rest is counted for the data report.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pandas as pd

from modelfoundry.data.tabular import check_column, row_name
from modelfoundry.errors import UserError

PAIRS = (("train", "test"), ("train", "val"), ("val", "test"))  # leakage: examples of the second in the first


# ---- labels --------------------------------------------------------------------------------------


def drop_unlabeled(frame: pd.DataFrame, column: str, origin: str) -> tuple[pd.DataFrame, int]:
    """Table rows (a whole table or a chunk) without a label are left out: (the rest, how many were left).
    `check_labelled` then checks the totals."""
    check_column(frame, column, "label", origin)
    unlabeled = frame[column].isna()
    return (frame[~unlabeled] if unlabeled.any() else frame), int(unlabeled.sum())


def check_labelled(rows: int, unlabeled: int, column: str, origin: str) -> None:
    """After `drop_unlabeled` over every row: some row must have a label."""
    if rows and unlabeled == rows:
        raise UserError(f"{origin}: label column '{column}' is empty in every row.")


def require_labels(labels: pd.Series, origin: str) -> None:
    """Texts: every row needs its label (an unlabeled text is a mistake, not a row to skip). `labels` is the
    column of a whole file or of a chunk, indexed by 0-based row number."""
    unlabeled = labels.isna().to_numpy()
    if unlabeled.any():
        first, rows = int(labels.index[np.argmax(unlabeled)]), labels.index
        raise UserError(
            f"{origin}: {row_name(origin, first)} has no label in column '{labels.name}' "
            f"({int(unlabeled.sum())} rows without one among rows {rows[0] + 1}-{rows[-1] + 1}). "
            "Label them or remove them."
        )


# ---- classes -------------------------------------------------------------------------------------


def sorted_labels(values) -> list[str]:
    """Class names in a stable order: numerically when every label is a number, else alphabetically."""
    unique = {str(v) for v in values}
    try:
        return sorted(unique, key=float)
    except ValueError:
        return sorted(unique)


def class_names(counts: Counter, origin: str) -> list[str]:
    """The classes of all examples (their counts) in order; a classifier needs at least two."""
    names = sorted_labels(counts)
    if not names:
        raise UserError(f"{origin}: no labelled examples are left to learn from.")
    if len(names) < 2:
        raise UserError(
            f"{origin}: only one class ({names[0]!r}) in the labels; a classifier needs at least two."
        )
    return names


def check_trained(counts: dict[str, Counter], origin: str, sources: dict[str, str] | None) -> None:
    """Every class of the validation and test parts must be in the training part: a model cannot learn a
    class it never sees. `counts`: examples per class of each part; `sources`: the file of each part when
    the parts are files (in memory), None when a streamed reader split the rows by hash."""
    trained = set(counts.get("train", ()))
    if sources:
        for part in ("val", "test"):
            unseen = sorted(set(counts.get(part, ())) - trained)
            if unseen:
                raise UserError(
                    f"{sources[part]}: label(s) {', '.join(map(repr, unseen[:5]))} never appear in the "
                    f"training file {sources['train']}; a model cannot learn a class it never sees. "
                    "Add examples of it to the training file or remove those rows."
                )
        return
    untrained = sorted(set().union(*counts.values()) - trained)
    if untrained:
        raise UserError(
            f"{origin}: class(es) {', '.join(map(repr, untrained[:5]))} have too few rows for any to "
            "fall in the training split (streaming splits by a hash of the row number). Add examples, "
            "remove the class, or set data.streaming: false for a stratified split."
        )


def class_balance(labels: np.ndarray | Counter, order: list[str]) -> tuple[dict[str, int], list[str]]:
    """Examples per class (from the labels, or their counts) and a warning when one class is rare."""
    counts = labels if isinstance(labels, Counter) else Counter(labels.tolist())
    balance = {label: int(counts.get(label, 0)) for label in order}
    warnings = []
    if len(balance) > 1 and min(balance.values()) * 5 < max(balance.values()):
        rare = min(balance, key=balance.get)
        warnings.append(
            f"class imbalance: '{rare}' has {balance[rare]} examples, the largest class "
            f"{max(balance.values())}; look at per-class recall, not accuracy alone."
        )
    return balance, warnings


# ---- duplicates and leakage ----------------------------------------------------------------------


def example_hashes(examples: np.ndarray | pd.DataFrame) -> np.ndarray:
    """One content hash per example (row or image), to find exact duplicates and leakage."""
    if isinstance(examples, pd.DataFrame):
        return pd.util.hash_pandas_object(examples, index=False).to_numpy()
    if examples.dtype == object:  # texts
        return pd.util.hash_array(examples)
    flat = np.ascontiguousarray(examples.reshape(len(examples), -1))
    return np.array([hashlib.blake2b(row.tobytes(), digest_size=8).hexdigest() for row in flat])


def duplicate_mask(hashes: np.ndarray) -> np.ndarray:
    """True for every repeat of an example seen earlier; by sorting, as a hash table of every row of a
    streamed file would cost about four times the memory."""
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    repeat = np.zeros(len(hashes), bool)
    repeat[order[1:]] = ordered[1:] == ordered[:-1]
    return repeat


def drop_duplicates(hashes: np.ndarray, dedupe: bool, report: dict) -> np.ndarray:
    """Counts the exact repeats among examples (their hashes) for the report; returns which to keep: all,
    or with data.dedupe the first copy of each."""
    repeats = duplicate_mask(hashes)
    report["duplicates"] = int(repeats.sum())
    if dedupe and repeats.any():
        report["dropped_duplicates"] = int(repeats.sum())
        return ~repeats
    return np.ones(len(hashes), bool)


def leakage(hashes: np.ndarray, splits: dict[str, np.ndarray]) -> dict[str, int]:
    """How many examples of one split also appear, identical, in another (`splits`: indices into hashes)."""
    return {f"{a}_{b}": int(np.isin(hashes[splits[b]], hashes[splits[a]]).sum()) for a, b in PAIRS}


def report_split(report: dict, hashes: np.ndarray, splits: dict[str, np.ndarray]) -> None:
    """The split's sizes and its leakage, for the report."""
    report["splits"] = {name: len(index) for name, index in splits.items()}
    report["leakage"] = leakage(hashes, splits)
