"""Column roles: what each feature column of a table is, found from the training rows before encoding.

    numeric    numbers (a column of numbers with a few stray words is one too: the words are errors)
    category   a few distinct values, one-hot encoded
    datetime   ISO 8601 dates or times, expanded to year, month, day, day of week and hour
    text       long free text, which a table model cannot read: dropped (text_classification reads it)
    id         a different value in (nearly) every row, or a counter: dropped (a model would memorise it)
    constant   one value in every row: dropped (it tells nothing)
    leak       predicts the label almost perfectly on its own (a copy of the label, an outcome recorded
               after the fact): dropped, since it will not be there, or not mean the same, when predicting

`data.columns: {name: role}` sets a column's role instead; `data.drop` drops columns. Every column of the
table is listed in the data report with its role and why. Read-whole and streamed tables alike call
`infer_roles` on the training rows the encoder is fitted on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from modelfoundry.errors import UserError

ROLES = ("numeric", "category", "datetime", "text", "id", "constant", "leak")
DROPPED = ("text", "id", "constant", "leak")
NUMERIC_SHARE = 0.9  # a column whose values are at least this share numbers is a number column
ID_SHARE = 0.95  # distinct values per row above which a text column is an id
MIN_ROWS = 20  # fewer training rows than this: too few to call a column an id or a leak
LEAK_SCORE = 0.999  # accuracy (or R2) of the label from one column alone that makes it a leak
TEXT_CHARACTERS, TEXT_WORDS = 30, 4  # mean length and words of a long free-text value
DATE_PARTS = ("year", "month", "day", "dayofweek", "hour")


def infer_roles(
    frame: pd.DataFrame, targets: np.ndarray | None, classifier: bool, chosen: dict[str, str], origin: str
) -> list[dict]:
    """Every column's {"name", "role", "why"}, from the training rows `frame` and their `targets` (class
    labels, or numbers; None: no leak check). `chosen`: data.columns, the roles the user set."""
    roles = []
    for name in frame.columns:
        values = frame[name]
        if name in chosen:
            role, why = chosen[name], "set by data.columns"
            if role == "numeric":
                _check_numbers(values, name, origin, "data.columns names it numeric")
        else:
            role, why = _role(values, name, origin)
        if role in ("numeric", "category") and name not in chosen and targets is not None:
            score = _alone(values, role, targets, classifier)
            if score is not None and score >= LEAK_SCORE:
                what = "accuracy" if classifier else "R2"
                role, why = "leak", f"predicts the label on its own ({what} {score:.3f} on the training rows)"
        roles.append({"name": name, "role": role, "why": why})
    return roles


def _role(values: pd.Series, name: str, origin: str) -> tuple[str, str]:
    present = values.dropna()
    distinct = present.nunique()
    if distinct <= 1:
        return "constant", "one value in every row" if len(present) else "empty in every row"
    if pd.api.types.is_bool_dtype(values):
        return "numeric", "true/false"
    if pd.api.types.is_numeric_dtype(values):
        if _counter(present):
            return "id", f"whole numbers, a different one in every row ({distinct:,} of {len(present):,})"
        return "numeric", "numbers"
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.notna().mean() >= NUMERIC_SHARE:
        _check_numbers(values, name, origin, f"{numbers.notna().mean():.0%} of its values are numbers")
        return "numeric", "numbers (written as text)"
    strings = present.astype(str)
    if pd.to_datetime(strings, errors="coerce", format="ISO8601").notna().mean() >= NUMERIC_SHARE:
        return "datetime", "ISO 8601 dates or times"
    if strings.str.len().mean() >= TEXT_CHARACTERS and strings.str.split().str.len().mean() >= TEXT_WORDS:
        return "text", f"long free text (mean {strings.str.len().mean():.0f} characters)"
    if len(present) >= MIN_ROWS and distinct / len(present) >= ID_SHARE:
        return "id", f"a different value in nearly every row ({distinct:,} of {len(present):,})"
    return "category", f"{distinct:,} distinct values"


def _counter(numbers: pd.Series) -> bool:
    """Whole numbers, all different, packed in a range little wider than their count: row numbers, ids.
    (Whole numbers in a float column count too: a streamed reader reads integer columns as floats.)"""
    if len(numbers) < MIN_ROWS or numbers.nunique() != len(numbers) or pd.api.types.is_bool_dtype(numbers):
        return False
    values = np.asarray(numbers, dtype=float)
    if not (values == np.round(values)).all():
        return False
    return float(values.max() - values.min() + 1) <= 2 * len(values)


def _check_numbers(values: pd.Series, name: str, origin: str, because: str) -> None:
    """A number column holds numbers: the first value that is not one is an error naming row and fix."""
    from modelfoundry.data.tabular import as_numbers, row_name

    numbers, i = as_numbers(values)
    if i is not None:
        count = int((numbers.isna() & values.notna()).sum())
        raise UserError(
            f"{origin}: {row_name(origin, values.index[i])}, column '{name}': {values.iloc[i]!r} is not a "
            f"number, and the column is a number column ({because}; {count} such value(s)). Fix or "
            f"empty those cells, or make it a category column with data.columns: {{{name}: category}}."
        )


def _alone(values: pd.Series, role: str, targets: np.ndarray, classifier: bool) -> float | None:
    """How well the label is predicted by this column alone on the training rows: accuracy of the most
    common label per value (numbers: per one of 32 quantile bins), or R2 of the mean per bin. None: too few
    rows to tell."""
    if len(values) < MIN_ROWS:
        return None
    if role == "numeric":
        numbers = pd.to_numeric(values, errors="coerce").astype(float)
        key = pd.qcut(numbers.rank(method="first"), min(32, len(values) // 4), labels=False)
    else:
        key = values.astype(str)
    key = key.fillna(-1).to_numpy() if role == "numeric" else key.fillna("").to_numpy()
    frame = pd.DataFrame({"key": key, "y": np.asarray(targets)})
    if classifier:
        if frame["key"].nunique() > len(frame) / 2:  # as many groups as rows: any column "predicts"
            return None
        hits = frame.groupby("key")["y"].agg(lambda y: y.value_counts().iloc[0]).sum()
        return float(hits / len(frame))
    y = frame["y"].astype(float)
    spread = float(((y - y.mean()) ** 2).sum())
    if spread == 0 or role != "numeric":
        return None
    # a number predicting a number: only a near-exact linear copy counts (bins would flatter any
    # smooth relation)
    x = pd.to_numeric(values, errors="coerce").astype(float)
    x = x.fillna(x.median())
    correlation = np.corrcoef(x.to_numpy(), y.to_numpy())[0, 1]
    return float(correlation**2) if np.isfinite(correlation) else None


def date_parts(values: pd.Series) -> np.ndarray:
    """(N, len(DATE_PARTS)) float64 parts of dates or times; NaN where a value is missing or no date."""
    when = pd.to_datetime(values.astype("string"), errors="coerce", format="mixed")
    return np.stack([getattr(when.dt, part).to_numpy(dtype=float, na_value=np.nan) for part in DATE_PARTS], 1)
