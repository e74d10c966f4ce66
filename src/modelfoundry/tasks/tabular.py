"""Tabular classification: feature columns and a label column of a CSV / TSV / JSONL / Parquet file,
or a scikit-learn built-in table.

Everything about table inputs lives here (tabular regression reuses it with a numeric target):
reading the file, the feature columns, missing values, the encoder (standardised numbers, one-hot
categories) fitted on the training split, what the report shows of a mistake, how the Predictor,
`foundry predict` and the HTTP service turn rows into features, and corrections as JSONL rows.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from modelfoundry.data import tabular, validate
from modelfoundry.errors import InputError, UserError, did_you_mean
from modelfoundry.tasks.base import Task, _take, at, json_type, one_upload, unicode_text
from modelfoundry.tasks.text import write_jsonl

# the label column name a built-in table's rows carry in corrections and in `evaluate --data` files
BUILTIN_LABEL = "target"


class TableInputs:
    """Table rows as inputs; mixed into a task with its target."""

    kind = "table"
    auto_models = ("gbdt", "mlp", "linear")
    auto_simplest_first = ("linear", "gbdt", "mlp")
    # One hidden layer of 64 rather than the MLP's (128, 64): over 8-10 seeds of the defaults, test R2 0.493
    # against 0.464 on diabetes, accuracy 0.968 against 0.965 on breast_cancer and 0.990 against 0.986 on
    # wine (on digits images the wider MLP stays better: 0.976 against 0.972). bench/RESULTS.md, defaults.
    family_recipes: ClassVar[dict[str, dict]] = {"mlp": {"model.hidden": [64]}}

    def model_table_spec(self, preprocessing: dict) -> dict | None:
        return {"category_blocks": category_blocks(preprocessing)}

    def load(self, data, base_dir: Path, path: Path, image_shape=None):
        origin, extra = str(path), {}
        if path.is_dir():
            raise UserError(
                f"data.source: {path} is a folder; {self.name} needs a .csv, .parquet or .jsonl file."
            )
        frame = tabular.read_table(path)
        frame, unlabeled = validate.drop_unlabeled(frame, data.label, origin)
        validate.check_labelled(len(frame) + unlabeled, unlabeled, data.label, origin)
        if unlabeled:
            extra["dropped_unlabeled_rows"] = unlabeled
        features = tabular.feature_columns(frame, data, origin)
        extra["ignored_columns"] = [c for c in frame.columns if c not in features]
        extra["columns"] = frame  # evaluate.sensitive may name any column; prepare keeps those aside
        return (
            frame[features],
            self.raw_targets(frame[data.label], origin),
            origin,
            extra,
        )

    def load_builtin(self, name: str, bunch):
        frame = pd.DataFrame(bunch.data, columns=[str(c) for c in bunch.feature_names])
        return frame, self.builtin_targets(bunch), f"builtin:{name}"

    def builtin_targets(self, bunch) -> np.ndarray:
        names = [str(n) for n in getattr(bunch, "target_names", [])]
        if not names:
            raise UserError(
                "data.source: this built-in set has numeric targets; use task: tabular_regression."
            )
        return np.array([names[t] for t in bunch.target])

    def streams(self, path: Path, data) -> bool:
        from modelfoundry.data import stream

        return not path.is_dir() and stream.wanted(data.streaming, path)

    def streamed(self, path: Path, config, base_dir: Path):
        from modelfoundry.data.prepare import streamed_table

        return streamed_table(path, config, base_dir)

    def encode(self, examples: pd.DataFrame, targets, split: dict, config, base_dir: Path, report: dict):
        from modelfoundry.data.prepare import ArrayData

        # the training file's other columns (label, data.drop) may come along in inputs; a built-in's: its
        # label column as `evaluate --data` files name it
        ignored = list(dict.fromkeys(report.pop("ignored_columns", None) or [BUILTIN_LABEL]))
        encoder = tabular.TableEncoder().fit(
            examples.iloc[split["train"]],
            ignored,
            targets.values[split["train"]],
            self.is_classifier,
            config.data.columns,
            report["source"],
        )
        report["columns"] = column_report(encoder, ignored, config.data)
        report["warnings"] += encoder.warnings
        features = encoder.transform(examples, report["source"])
        parts = {k: ArrayData(features[v], targets.values[v]) if len(v) else None for k, v in split.items()}
        display = examples.iloc[split["test"]].to_dict(orient="records")
        return parts, tuple(features.shape[1:]), {"kind": "table", **encoder.spec}, {}, display

    def shown(self, item) -> dict:
        return {"row": item}

    def importance(self, predictor, display, targets: np.ndarray, spec: dict) -> dict | None:
        """Permutation importance of each column the model reads, in the metric retraining compares. The rows
        are encoded once and a column's features (one, or a category's one-hot block) shuffled together."""
        import torch

        from modelfoundry.evaluate.importance import permutation_importance, sample_rows, shuffled_block

        rows = sample_rows(len(targets))
        features = self.encode_inputs(predictor, pd.DataFrame(_take(display, rows.tolist()))).numpy()
        blocks = feature_blocks(spec["preprocessing"])
        return permutation_importance(
            lambda x: predictor.run(torch.from_numpy(x)),
            features,
            list(blocks),
            lambda x, name, order: shuffled_block(x, blocks[name], order),
            lambda p: self.score(p, targets[rows], spec),
            self.retrain_metric,
            self.retrain_higher_is_better,
        )

    # ---- Predictor and service -------------------------------------------------------------------

    def encode_inputs(self, predictor, inputs, origin: str = "input"):
        import torch

        frame = read_rows(inputs)
        return torch.from_numpy(
            tabular.TableEncoder(predictor.spec["preprocessing"]).transform(frame, origin)
        )

    def encode_request(self, predictor, inputs: list, limits, field: str = "inputs"):
        """Rows as objects column -> value: every column the model reads, numbers where it takes numbers
        (JSON numbers or numeric strings such as "17.99", finite and within float32)."""
        columns = predictor.spec["preprocessing"]["columns"]
        names = [c["name"] for c in columns]
        ignored = predictor.spec["preprocessing"].get("ignored_columns", [])  # the label, data.drop
        rows = []
        for i, row in enumerate(inputs):
            where = at(field, i)
            if not isinstance(row, dict):
                raise InputError(
                    422, where, f"a table model takes objects of column -> value; got {json_type(row)}."
                )
            missing = [n for n in names if n not in row]
            extra = [k for k in row if k not in names and k not in ignored]
            if missing:
                raise InputError(
                    422,
                    where,
                    f"missing column(s) {', '.join(map(repr, missing))}. "
                    f"The model needs: {', '.join(names)}.",
                )
            if extra:
                raise InputError(
                    422,
                    where,
                    f"unknown column(s) {', '.join(map(repr, extra))}."
                    f"{did_you_mean(extra[0], missing or names)}"
                    f" The model takes: {', '.join(names)}.",
                )
            rows.append({c["name"]: cell(c, row[c["name"]], f"{where}.{c['name']}") for c in columns})
        try:
            features = self.encode_inputs(predictor, pd.DataFrame(rows, columns=names), field)
        except tabular.CellError as exc:  # finite (cell() checked), but it leaves float32 once standardised
            name, column = exc.column["name"], exc.column
            raise InputError(
                422,
                f"{at(field, exc.i)}.{name}",
                f"{rows[exc.i][name]!r} is too far from the numbers the model was trained on (mean "
                f"{column['mean']:.4g}, spread {column['std']:.4g}): standardised, it leaves float32. "
                "Send a number in the range of the training data.",
            ) from None
        return features, [{"row": row} for row in rows]

    def batch_inputs(self, predictor, files: list[tuple[str, Path]], limits):
        """One table file: its rows as objects of the model's columns, named by row number (1 = the first data
        row, as `foundry predict` numbers them). Missing cells become null; other columns (the label, an id)
        are left out and named in the notes."""
        name, path = one_upload(files, self.batch_suffixes, "table")
        frame = tabular.read_table(path)
        names = [c["name"] for c in predictor.spec["preprocessing"]["columns"]]
        missing = [n for n in names if n not in frame.columns]
        if missing:
            raise InputError(
                422,
                "file",
                f"{name}: missing column(s) {', '.join(map(repr, missing))}."
                f"{did_you_mean(missing[0], [str(c) for c in frame.columns if c not in names])} "
                f"The model needs: {', '.join(names)}.",
            )
        ignored = [str(c) for c in frame.columns if c not in names]
        notes = [f"ignored column(s) the model does not read: {', '.join(ignored)}"] if ignored else []
        return [str(i + 1) for i in range(len(frame))], FrameRows(frame[names]), notes

    def cli_inputs(self, predictor, inputs: list[str]):
        if len(inputs) != 1:
            raise UserError("predict: a table model takes one CSV/Parquet/JSONL file.")
        return inputs[0], None  # by path, so errors name the file and line; rows are numbered

    def card(self, spec: dict) -> dict:
        columns = spec["preprocessing"]["columns"]
        return {
            "columns": [
                {"name": c["name"], "kind": c["kind"], "categories": c.get("categories", [])} for c in columns
            ]
        }

    def encoded_groups(self, spec: dict, encoded, column: str) -> np.ndarray:
        """Each encoded row's category of `column`, read back from its one-hot block (None where the row held
        a category the training split did not)."""
        columns = {c["name"]: c for c in spec["preprocessing"]["columns"]}
        if columns.get(column, {}).get("kind") != "category":
            categories = ", ".join(n for n, c in columns.items() if c["kind"] == "category") or "none"
            raise UserError(
                f"evaluate.threshold_policy.sensitive: {column!r} is not a category column the model reads "
                f"({categories}); a threshold "
                "per group needs the group in every row the model is given. Name one of those, or set "
                f"data.columns: {{{column}: category}}."
            )
        onehot = np.asarray(encoded.cpu() if hasattr(encoded, "cpu") else encoded)[
            :, feature_blocks(spec["preprocessing"])[column]
        ]
        names = np.array(columns[column]["categories"], dtype=object)
        return np.where(onehot.max(1) > 0.5, names[onehot.argmax(1)], None)

    # ---- explanations ----------------------------------------------------------------------------

    def explained_inputs(self, inputs) -> list:
        return read_rows(inputs).to_dict(orient="records")

    def explain_encoded(self, predictor, encoded, target, steps: int, raw) -> dict:
        """Per column of the user's table, how much it moved the explained number: gbdt by LightGBM's SHAP
        values (exact for trees, in the raw score: log-odds for two classes), other networks by integrated
        gradients from the encoded zero row (every number at its training mean, no category). A column's
        encoded features (a category's one-hot block) are summed back into one contribution."""
        from modelfoundry.evaluate.explain import integrated_gradients, top

        model, spec = predictor.model, predictor.spec
        features = encoded[0]  # (F,)
        head = {}
        if hasattr(model, "contributions"):  # the trees' own SHAP values (Lundberg et al. 2020)
            values, start, unit = self.tree_contributions(
                model.contributions(features[None].numpy())[0], target, spec
            )
            output, delta, head["explains"] = start + float(values.sum()), None, unit
            head["baseline"] = "the training rows on average"
            method = "SHAP values of the trees (LightGBM pred_contrib)"
        else:
            x = features.to(next(model.parameters()).device)
            attributions, output, start, delta = integrated_gradients(
                lambda path: self.explained(model(path), spec, target), x, x.new_zeros(x.shape), steps
            )
            values = attributions.cpu().numpy()
            head.update(baseline="a row of training means and no category", steps=steps)
            method = "integrated gradients over the encoded row"
        blocks = feature_blocks(spec["preprocessing"])
        contributions = sorted(
            (
                {
                    "column": name,
                    "value": plain_value(raw.get(name)),
                    "contribution": float(values[block].sum()),
                }
                for name, block in blocks.items()
            ),
            key=lambda c: -abs(c["contribution"]),
        )
        return {
            **head,
            "method": method,
            "output": output,
            "baseline_output": start,
            "convergence_delta": delta,
            "contributions": contributions,
            "top": top(
                [c["column"] for c in contributions], np.array([c["contribution"] for c in contributions])
            ),
        }

    def explanation_html(self, explanation: dict) -> str:
        from modelfoundry.evaluate.explain import contribution_bars

        return contribution_bars(explanation["contributions"])

    def shown_input(self, mistake: dict, predictor=None):
        """The row without the columns the model neither reads nor ignores: an `evaluate --data` file's label
        column named by --label, which the row carries for the report."""
        if predictor is None:
            return mistake["row"]
        unknown = set(tabular.TableEncoder(predictor.spec["preprocessing"]).unknown_columns(mistake["row"]))
        return {k: v for k, v in mistake["row"].items() if k not in unknown}

    # ---- evaluation of new data, retraining ------------------------------------------------------

    def read_labelled(self, predictor, source: Path, label: str | None):
        frame = tabular.read_table(source)
        column = label or predictor.spec.get("label_column") or BUILTIN_LABEL
        try:
            tabular.check_column(frame, column, "label", str(source))
        except UserError as exc:
            if label:
                raise
            raise UserError(
                f"{exc} The model was trained with labels in column '{column}': add that column, or "
                "name the column that holds the labels with --label COLUMN."
            ) from None
        frame, _ = validate.drop_unlabeled(frame, column, str(source))
        raw = self.raw_targets(frame[column], str(source))
        return frame.drop(columns=[column]), raw, frame.to_dict(orient="records")

    def labelled_columns(self, predictor, source: Path, display) -> pd.DataFrame:
        return pd.DataFrame(list(display))

    def feedback_records(self, rows, config: dict, folder: Path) -> Path:
        data = config["data"]
        records = [
            {
                **dict.fromkeys(data.get("drop", [])),
                **row.input["row"],
                data["label"]: self.stored(row.label),
            }
            for row in rows
        ]
        return write_jsonl(records, folder)


class TabularClassification(TableInputs, Task):
    name = "tabular_classification"
    starter = """\
# modelfoundry config: tabular classification. Train with `foundry train config.yaml`.
task: tabular_classification
data:
  source: builtin:breast_cancer   # or a .csv / .parquet / .jsonl file
  label: target                   # the label column (needed for files)
  # drop: [id]                    # columns to ignore
  missing: impute                 # impute | drop | error
  split: {val: 0.1, test: 0.2, seed: 0}
model:                            # leave model: out and foundry picks gbdt, mlp or linear (auto)
  name: mlp                       # or gbdt (gradient-boosted trees: n_estimators, num_leaves, ...)
  hidden: [64]
  dropout: 0.1
"""


def category_blocks(preprocessing: dict) -> list[list[int]]:
    """[start, width] of each category column's one-hot block in the encoded features."""
    blocks = feature_blocks(preprocessing)
    return [
        [int(blocks[c["name"]][0]), len(blocks[c["name"]])]
        for c in preprocessing["columns"]
        if c["kind"] == "category" and len(blocks[c["name"]])
    ]


def feature_blocks(preprocessing: dict) -> dict[str, np.ndarray]:
    """Each column's encoded features (indices into `TableEncoder.transform`'s output, which encodes the
    columns one after another): a number's one, a category's one-hot block, a date's parts."""
    blocks, start = {}, 0
    for column in preprocessing["columns"]:
        width = len(tabular.TableEncoder({"columns": [column]}).feature_names)
        blocks[column["name"]] = np.arange(start, start + width)
        start += width
    return blocks


def column_report(encoder, ignored: list[str], data) -> list[dict]:
    """Every column of the table with its role and why: the features' (data/roles.py), then the others."""
    labels = (data.label, BUILTIN_LABEL)
    return encoder.roles + [
        {
            "name": name,
            "role": "label" if name in labels else "dropped",
            "why": "the label"
            if name in labels
            else ("data.drop" if name in data.drop else "not in data.features"),
        }
        for name in ignored
    ]


class FrameRows:
    """A table's rows as request objects (column -> value, a missing cell None), made a slice at a time: a
    file of 100,000 rows is held once, as its frame, not again as 100,000 dicts."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, rows: slice) -> list[dict]:
        part = self.frame.iloc[rows]
        return part.astype(object).where(part.notna(), None).to_dict(orient="records")


FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4e38: the models compute in float32
# "17.99", "-1e3", " 5 "; not "inf", "1_000" or other scripts' digits (float() would take them)
NUMBER = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*")


def cell(column: dict, value, field: str):
    """One cell of a served row, checked: a category column takes a string or a number; a number column
    a finite number within float32, sent as a JSON number or a numeric string (pydantic's lax mode: what
    a client reading a CSV sends), or null for a missing value."""
    if isinstance(value, str):
        value = unicode_text(value)
    if column["kind"] == "datetime" and value is not None:
        if not isinstance(value, str) or pd.isna(pd.to_datetime(value, errors="coerce", format="mixed")):
            raise InputError(
                422,
                field,
                f'{value!r} is not a date or time; send one as text, such as "2024-05-31" or '
                '"2024-05-31T14:30" (or null for a missing value).',
            )
        return value
    if column["kind"] != "number":
        if isinstance(value, (dict, list)):
            raise InputError(422, field, f"got {json_type(value)}; give a string or number.")
        return value
    if isinstance(value, str) and NUMBER.fullmatch(value):
        value = float(value)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(
            422,
            field,
            f"{value!r} is not a number; this column takes numbers, as JSON numbers or numeric strings "
            'such as "17.99" (or null for a missing value).',
        )
    if not abs(value) <= FLOAT32_MAX:  # NaN compares False; an int of any size compares exactly
        shown = repr(value) if len(repr(value)) <= 24 else f"a number of {len(repr(value))} digits"
        raise InputError(
            422,
            field,
            f"{shown} is not a finite number within ±3.4e38 (float32, what the model computes in); "
            "send a finite number, or null for a missing value.",
        )
    return value


def plain_value(value):
    """A cell as JSON holds it: a Python number or string, None for a missing one."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
        return None
    return (
        value.item()
        if isinstance(value, np.generic)
        else value
        if isinstance(value, (int, float))
        else str(value)
    )


def read_rows(inputs) -> pd.DataFrame:
    if isinstance(inputs, pd.DataFrame):
        return inputs.reset_index(drop=True)
    if isinstance(inputs, dict):
        return pd.DataFrame([inputs])
    if isinstance(inputs, (str, Path)):
        path = Path(inputs)
        if not path.is_file():
            raise UserError(f"{path}: no such file.")
        return tabular.read_table(path)
    if isinstance(inputs, (list, tuple)) and all(isinstance(r, dict) for r in inputs):
        return pd.DataFrame(list(inputs))
    raise UserError(
        "table inputs must be a DataFrame, a dict, a list of dicts, or a .csv/.parquet/.jsonl path."
    )
