"""Seeded, stratified train / validation / test split."""

from __future__ import annotations

from collections import Counter

import numpy as np
from sklearn.model_selection import train_test_split

from modelfoundry.errors import UserError


def split_indices(
    labels: np.ndarray, val: float, test: float, seed: int, stratify: bool
) -> dict[str, np.ndarray]:
    """Split example indices into {'train', 'val', 'test'}; same labels and seed -> same split.

    Stratified splits keep each class's share in every part, so every class needs at least one
    example per non-empty part.
    """
    parts = 1 + (val > 0) + (test > 0)
    if stratify:
        counts = Counter(labels.tolist())
        rare = sorted((n, str(c)) for c, n in counts.items() if n < parts)
        if rare:
            listing = ", ".join(f"'{c}' ({n})" for n, c in rare[:5])
            raise UserError(
                f"data: class(es) {listing} have too few examples to split into {parts} stratified "
                f"parts (need at least {parts} each). Add examples, remove the class, or set "
                "data.split.stratify: false."
            )
    index = np.arange(len(labels))
    out = {"val": index[:0], "test": index[:0]}
    rest = index
    for name, fraction in (("test", test), ("val", val)):
        if fraction <= 0:
            continue
        # `fraction` is of the whole data set; rescale to what is left.
        share = fraction / (len(rest) / len(labels))
        try:
            rest, out[name] = train_test_split(
                rest, test_size=share, random_state=seed, stratify=labels[rest] if stratify else None
            )
        except ValueError as exc:
            raise UserError(
                f"data.split: cannot split {len(rest)} examples with {name}={fraction:g}: {exc}. "
                "Use a larger data set or smaller split fractions."
            ) from None
    out["train"] = np.sort(rest)
    out["val"], out["test"] = np.sort(out["val"]), np.sort(out["test"])
    return out
