"""The data report: what in the data would hurt a model, measured before training.

Fatal problems raise UserError where they are found (sources, tabular); this module counts
the rest — class balance, duplicates, leakage between splits — for the report.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pandas as pd


def example_hashes(examples: np.ndarray | pd.DataFrame) -> np.ndarray:
    """One content hash per example (row or image), to find exact duplicates and leakage."""
    if isinstance(examples, pd.DataFrame):
        return pd.util.hash_pandas_object(examples, index=False).to_numpy()
    if examples.dtype == object:  # texts
        return pd.util.hash_array(examples)
    flat = np.ascontiguousarray(examples.reshape(len(examples), -1))
    return np.array([hashlib.blake2b(row.tobytes(), digest_size=8).hexdigest() for row in flat])


def duplicate_mask(hashes: np.ndarray) -> np.ndarray:
    """True for every repeat of an example seen earlier."""
    return pd.Series(hashes).duplicated().to_numpy()


def leakage(hashes: np.ndarray, splits: dict[str, np.ndarray]) -> dict[str, int]:
    """How many examples of one split also appear, identical, in another."""
    sets = {name: set(hashes[idx].tolist()) for name, idx in splits.items()}
    out = {}
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        out[f"{a}_{b}"] = int(sum(h in sets[a] for h in hashes[splits[b]].tolist()))
    return out


def sorted_labels(values) -> list[str]:
    """Class names in a stable order: numerically when every label is a number, else alphabetically."""
    unique = {str(v) for v in values}
    try:
        return sorted(unique, key=float)
    except ValueError:
        return sorted(unique)


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
