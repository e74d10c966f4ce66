"""Tables: reading CSV / Parquet / JSONL, checking values against the missing-value policy, and
the feature encoder (standardised numbers, one-hot categories) that is fitted on the training
split and saved as JSON in the model package.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from modelfoundry.errors import UserError, did_you_mean

if TYPE_CHECKING:
    from modelfoundry.config import DataConfig

TABLE_SUFFIXES = {".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".json"}
MAX_CATEGORIES = 50
MISSING = "__missing__"
FLOAT32_MAX = float(np.finfo(np.float32).max)  # models compute in float32: beyond it numbers become inf


def read_table(path: Path, *, quoting: bool = True, text: bool = False) -> pd.DataFrame:
    """Read a table file; empty or unparsable files become a UserError naming the file.

    Args:
        quoting: CSV/TSV only; False reads quote characters as text (SST-2 style files).
        text: the file holds free text: only truly empty cells are missing ("NA", "null" are words),
            and bytes that are not UTF-8 are an error naming the line.
    """
    suffix = path.suffix.lower()
    if text and suffix in (".csv", ".tsv", ".jsonl", ".json"):
        check_utf8(path)
    na = {"keep_default_na": False, "na_values": [""]} if text else {}
    try:
        if suffix in (".csv", ".tsv"):
            frame = pd.read_csv(
                path,
                sep="\t" if suffix == ".tsv" else ",",
                quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE,
                **na,
            )
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=suffix == ".jsonl", **({"dtype": False} if text else {}))
        else:
            raise UserError(
                f"{path}: unsupported table format '{suffix}'. Use one of "
                f"{', '.join(sorted(TABLE_SUFFIXES))}."
            )
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty. Add a header row and at least one data row.") from None
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError, OSError) as exc:
        if isinstance(exc, UnicodeDecodeError):
            check_utf8(path)  # names the line and the bytes, and how to re-encode
        hint = (
            " If the texts contain quote characters that do not enclose fields, set data.quoting: false."
            if quoting and suffix in (".csv", ".tsv") and isinstance(exc, pd.errors.ParserError)
            else ""
        )
        raise UserError(f"{path}: could not be read as {suffix[1:]}: {exc}.{hint}") from None
    if frame.empty:
        raise UserError(f"{path}: the table has a header but no data rows.")
    frame.columns = [str(c) for c in frame.columns]
    return frame


def check_utf8(path: Path, block: int = 1 << 24) -> None:
    """Raise a UserError naming the line and bytes of the first invalid UTF-8 sequence; reads the file
    in blocks, so a file larger than memory is checked too."""
    line, line_start, offset, carry = 1, 0, 0, b""  # line: of the next byte; line_start: its absolute offset
    with open(path, "rb") as f:
        while True:
            chunk = f.read(block)
            data, base = carry + chunk, offset - len(carry)
            good = len(data)
            try:
                data.decode("utf-8")
                carry = b""
            except UnicodeDecodeError as exc:
                cut_short = exc.reason == "unexpected end of data" and exc.end == len(data)
                if not (cut_short and chunk):  # a bad sequence, or one the end of the file cuts short
                    at = data.rfind(b"\n", 0, exc.start)
                    bad_line = line + data.count(b"\n", 0, exc.start)
                    column = exc.start - at if at >= 0 else base + exc.start - line_start + 1
                    row = (
                        f"row {bad_line - 1}, "
                        if path.suffix.lower() in (".csv", ".tsv") and bad_line > 1
                        else ""
                    )
                    raise UserError(
                        f"{path}: {row}line {bad_line}, byte {column}: {data[exc.start : exc.end]!r} is not "
                        "valid UTF-8. Save the file as UTF-8 (for example `iconv -f latin1 -t utf-8 "
                        "in.csv > out.csv`)."
                    ) from None
                good, carry = exc.start, data[exc.start :]  # a character split across two blocks
            line += data.count(b"\n", 0, good)
            at = data.rfind(b"\n", 0, good)
            if at >= 0:
                line_start = base + at + 1
            offset += len(chunk)
            if not chunk:
                return


def plain(value) -> str:
    """A cell value as a user wrote it: 'zz', 1e+308, inf (not numpy's np.str_('zz'), np.float64(inf))."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def as_numbers(values: pd.Series) -> tuple[pd.Series, int | None]:
    """The cells as numbers (empty cells NaN), and the position of the first cell that holds something
    other than a number, or None: the one test behind every "is not a number" message naming a row."""
    numbers = pd.to_numeric(values, errors="coerce")
    bad = (numbers.isna() & values.notna()).to_numpy()
    return numbers, int(np.argmax(bad)) if bad.any() else None


def row_name(path: str, index: int) -> str:
    """How a user finds row `index` (0-based data row) in the file: CSV counts the header line."""
    if path.endswith((".csv", ".tsv")):
        return f"row {index + 1} (line {index + 2} of {Path(path).name})"
    return f"row {index + 1}"


def check_column(frame: pd.DataFrame, column: str, what: str, origin: str) -> None:
    if column not in frame.columns:
        raise UserError(
            f"{origin}: {what} column '{column}' not found.{did_you_mean(column, frame.columns)} "
            f"Columns: {', '.join(map(str, frame.columns[:30]))}."
        )


def feature_columns(frame: pd.DataFrame, data: DataConfig, origin: str) -> list[str]:
    """The columns a model reads: data.features, else every column but the label and data.drop."""
    for column in data.drop + (data.features or []):
        check_column(frame, column, "feature" if column in (data.features or []) else "dropped", origin)
    for column in data.columns:
        check_column(frame, column, "data.columns", origin)
    columns = data.features or [c for c in frame.columns if c != data.label and c not in data.drop]
    if not columns:
        raise UserError(f"{origin}: no feature columns left besides the label '{data.label}'.")
    return columns


def check_missing(
    frame: pd.DataFrame, policy: str, max_fraction: float, origin: str
) -> tuple[pd.DataFrame, dict]:
    """Apply the missing-value policy; inf is never allowed. Returns the kept rows and missing counts."""
    numeric = frame.select_dtypes(include="number")
    infinite = np.isinf(numeric.to_numpy(dtype=float, na_value=np.nan))
    if infinite.any():
        r, c = np.argwhere(infinite)[0]
        raise UserError(
            f"{origin}: {row_name(origin, frame.index[r])}, column '{numeric.columns[c]}': value "
            f"{numeric.iat[r, c]} is infinite ({int(infinite.sum())} infinite cell(s) in all). "
            "Replace them with a number or leave them empty to be imputed."
        )
    missing = frame.isna()
    counts = {c: int(n) for c, n in missing.sum().items() if n}
    if not counts:
        return frame, counts
    if policy == "error":
        r, c = np.argwhere(missing.to_numpy())[0]
        raise UserError(
            f"{origin}: {row_name(origin, frame.index[r])}, column '{frame.columns[c]}' is empty "
            f"({sum(counts.values())} empty cells in all) and data.missing is 'error'. "
            "Fill them, or set data.missing to impute or drop."
        )
    if policy == "drop":
        return frame[~missing.any(axis=1)], counts
    too_many = {c: n / len(frame) for c, n in counts.items() if n / len(frame) > max_fraction}
    if too_many:
        column, fraction = max(too_many.items(), key=lambda kv: kv[1])
        raise UserError(
            f"{origin}: column '{column}' is {fraction:.0%} empty, more than data.max_missing_fraction="
            f"{max_fraction:g}. Drop the column (data.drop: [{column}]) or raise the limit."
        )
    return frame, counts


def _moments(numbers: pd.Series) -> dict:
    """What standardising a number column needs: the median that fills gaps, then mean and spread."""
    numbers = numbers.astype(float)
    median = float(numbers.median()) if numbers.notna().any() else 0.0
    filled = numbers.fillna(median)
    return {"fill": median, "mean": float(filled.mean()), "std": float(filled.std(ddof=0)) or 1.0}


class CellError(UserError):
    """A cell the encoder refuses, with its position (row `i` of the frame, `column` its spec), so the
    HTTP service can name the request field (`inputs.3.x2`)."""

    def __init__(self, i: int, column: dict, message: str):
        super().__init__(message)
        self.i, self.column = i, column


class TableEncoder:
    """Numbers -> standardised (median-imputed); other columns -> one-hot over the training categories."""

    def __init__(self, spec: dict | None = None):
        self.spec = spec

    def fit(
        self,
        frame: pd.DataFrame,
        ignored: list[str] | None = None,
        targets: np.ndarray | None = None,
        classifier: bool = True,
        chosen: dict[str, str] | None = None,
        origin: str = "data",
    ) -> TableEncoder:
        """Fit on the training rows' feature columns, each by its role (data/roles.py: inferred from the
        rows and their `targets`, or `chosen` by data.columns); `roles` lists them, `warnings` says which
        were dropped and why. `ignored`: the other columns of the training file (the label, data.drop),
        which inputs may carry and are ignored, as are dropped roles; any other column is refused.
        None (packages before this rule): every column is ignored."""
        from modelfoundry.data.roles import DROPPED, date_parts, infer_roles

        self.roles = infer_roles(frame, targets, classifier, chosen or {}, origin)
        self.warnings = [
            f"{origin}: column '{r['name']}' is not used: role {r['role']}, {r['why']}. If the model should "
            f"read it, set its role with data.columns: {{{r['name']}: numeric}} (or category)."
            for r in self.roles
            if r["role"] in DROPPED and r["why"] != "set by data.columns"
        ]
        columns = []
        for role in self.roles:
            name, values = role["name"], frame[role["name"]]
            if role["role"] == "numeric":
                columns.append(
                    {"name": name, "kind": "number", **_moments(pd.to_numeric(values, errors="coerce"))}
                )
            elif role["role"] == "datetime":
                moments = [_moments(pd.Series(part)) for part in date_parts(values).T]
                columns.append(
                    {"name": name, "kind": "datetime", **{k: [m[k] for m in moments] for k in moments[0]}}
                )
            elif role["role"] == "category":
                top = values.fillna(MISSING).astype(str).value_counts().index[:MAX_CATEGORIES]
                columns.append({"name": name, "kind": "category", "categories": sorted(top)})
        if not columns:
            raise UserError(
                f"{origin}: no feature column is left to learn from: "
                + "; ".join(f"'{r['name']}' is {r['role']} ({r['why']})" for r in self.roles)
                + ". Set a column's role with data.columns: {NAME: numeric} (or category)."
            )
        self.spec = {"columns": columns}
        if ignored is not None:
            dropped = [r["name"] for r in self.roles if r["role"] in DROPPED]
            self.spec["ignored_columns"] = list(dict.fromkeys([*ignored, *dropped]))
        return self

    @property
    def feature_names(self) -> list[str]:
        names = []
        for col in self.spec["columns"]:
            if col["kind"] == "datetime":
                from modelfoundry.data.roles import DATE_PARTS

                names += [f"{col['name']}.{part}" for part in DATE_PARTS]
            else:
                names += (
                    [col["name"]]
                    if col["kind"] == "number"
                    else [f"{col['name']}={c}" for c in col["categories"]]
                )
        return names

    def unknown_columns(self, columns) -> list[str]:
        """Columns that are neither features nor ignored by the model (none for a package from before
        `ignored_columns` was recorded)."""
        if "ignored_columns" not in self.spec:
            return []
        known = {c["name"] for c in self.spec["columns"]} | set(self.spec["ignored_columns"])
        return [str(c) for c in columns if str(c) not in known]

    def check_unknown(self, columns, origin: str) -> None:
        """One rule for `foundry predict`, `Predictor` and the HTTP service: the columns the model was
        trained to ignore may come along; any other column is a mistake (a misspelt or renamed feature)."""
        unknown = self.unknown_columns(columns)
        if not unknown:
            return
        names = [c["name"] for c in self.spec["columns"]]
        ignored = self.spec["ignored_columns"]
        raise UserError(
            f"{origin}: column(s) {', '.join(map(repr, unknown[:10]))} are not columns this model reads or "
            f"ignores.{did_you_mean(unknown[0], names)} It reads: {', '.join(names[:30])}"
            + (f"; it ignores: {', '.join(ignored)}" if ignored else "")
            + ". Remove or rename the column(s)."
        )

    def transform(self, frame: pd.DataFrame, origin: str = "input") -> np.ndarray:
        """Table -> (N, F) float32 features. Raises UserError naming missing columns or non-numeric values."""
        missing = [c["name"] for c in self.spec["columns"] if c["name"] not in frame.columns]
        if missing:
            raise UserError(
                f"{origin}: the model needs column(s) {', '.join(map(repr, missing))}, which are absent."
                + did_you_mean(missing[0], frame.columns)
            )
        self.check_unknown(frame.columns, origin)
        parts = []
        for col in self.spec["columns"]:
            values = frame[col["name"]]
            if col["kind"] == "number":
                numbers, i = as_numbers(values)
                if i is not None:
                    raise UserError(
                        f"{origin}: {row_name(origin, frame.index[i])}, column '{col['name']}': "
                        f"{values.iloc[i]!r} is not a number, and the model reads numbers in this column. "
                        "Fix or empty the cell (or, training, make it a category column with data.columns: "
                        f"{{{col['name']}: category}})."
                    )
                with np.errstate(over="ignore"):  # 1e308 becomes inf in float32: refused just below
                    filled = numbers.fillna(col["fill"]).to_numpy(dtype=np.float64).astype(np.float32)
                    scaled = (filled - col["mean"]) / col["std"]
                # inf, and numbers beyond float32 (1e308): the model would compute with inf and answer NaN
                too_big = ~np.isfinite(scaled)
                if too_big.any():
                    i = int(np.argmax(too_big))
                    what = "infinite" if np.isinf(numbers.iloc[i]) else "too large"
                    raise CellError(
                        i,
                        col,
                        f"{origin}: {row_name(origin, frame.index[i])}, column '{col['name']}': "
                        f"{plain(values.iloc[i])} is {what}"
                        f" ({int(too_big.sum())} such cell(s) in all); the model takes finite numbers "
                        f"within ±{FLOAT32_MAX:.1e}. Replace them with a number or leave them empty to be "
                        "imputed.",
                    )
                parts.append(scaled[:, None])
            elif col["kind"] == "datetime":
                from modelfoundry.data.roles import date_parts

                parts_of = date_parts(values)
                bad = values.notna().to_numpy() & np.isnan(parts_of[:, 0])
                if bad.any():
                    i = int(np.argmax(bad))
                    raise UserError(
                        f"{origin}: {row_name(origin, frame.index[i])}, column '{col['name']}': "
                        f"{plain(values.iloc[i])} is not a date or time, and the model reads dates in this "
                        "column (such as 2024-05-31 or 2024-05-31T14:30). Fix or empty the cell."
                    )
                filled = np.where(np.isnan(parts_of), np.array(col["fill"]), parts_of)
                parts.append(((filled - np.array(col["mean"])) / np.array(col["std"])).astype(np.float32))
            else:
                strings = values.fillna(MISSING).astype(str).to_numpy()
                parts.append((strings[:, None] == np.array(col["categories"])[None, :]).astype(np.float32))
        return np.concatenate(parts, axis=1).astype(np.float32)
