"""From a data config to tensors ready for training: load the source, validate, split, encode.

`prepare` is the one entry point; `ArrayData` is what the training loop iterates over.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from modelfoundry.config import Config, DataConfig
from modelfoundry.data import images, tabular, validate
from modelfoundry.data.split import split_indices
from modelfoundry.errors import UserError, did_you_mean

BUILTINS = ("digits", "breast_cancer", "wine", "iris")


class ArrayData:
    """Examples held in memory as tensors; `batches` yields (inputs, targets) for one epoch."""

    def __init__(self, inputs: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor):
        self.inputs = torch.as_tensor(inputs, dtype=torch.float32)
        self.targets = torch.as_tensor(targets, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.targets)

    def to(self, device: torch.device) -> ArrayData:
        return ArrayData(self.inputs.to(device), self.targets.to(device))

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=generator).to(self.inputs.device)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                yield self.inputs[idx], self.targets[idx]
        else:
            for start in range(0, n, batch_size):
                yield self.inputs[start:start + batch_size], self.targets[start:start + batch_size]


@dataclass
class Prepared:
    """Everything training, evaluation and packaging need from the data."""

    train: ArrayData
    val: ArrayData | None
    test: ArrayData | None
    labels: list[str]
    input_shape: tuple[int, ...]
    preprocessing: dict
    report: dict
    test_display: list = field(default_factory=list)  # per test example: image (C,H,W) in [0,1] or row dict


def resolve_source(source: str, base_dir: Path) -> Path:
    """Relative paths are tried against the working folder first, then the config file's folder."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if not path.is_absolute() and (base_dir / path).exists():
        return base_dir / path
    places = " and ".join(dict.fromkeys(str(p) for p in (Path.cwd(), base_dir)))
    raise UserError(f"data.source: '{source}' not found (looked in {places}). Give an existing "
                    f"image folder or .csv/.parquet/.jsonl file, or one of: "
                    + ", ".join(f"builtin:{b}" for b in BUILTINS) + ".")


def sorted_labels(values) -> list[str]:
    """Class names in a stable order: numerically when every label is a number, else alphabetically."""
    unique = {str(v) for v in values}
    try:
        return sorted(unique, key=float)
    except ValueError:
        return sorted(unique)


def load_raw(data: DataConfig, task: str, base_dir: Path):
    """Returns (examples, labels as str, origin, extra report fields). Images: (N, C, H, W) array; tables: DataFrame."""
    extra: dict = {}
    if data.source.startswith("builtin:"):
        return _load_builtin(data.source.removeprefix("builtin:"), task) + (extra,)
    path = resolve_source(data.source, base_dir)
    origin = str(path)
    if task == "image_classification":
        if not path.is_dir():
            raise UserError(f"data.source: {path} is a file; image_classification needs a folder with one "
                            "sub-folder per class, or an MNIST IDX folder.")
        if list(path.glob("*idx3-ubyte*")):
            examples, labels, _ = images.read_idx_folder(path)
        else:
            examples, labels, _, skipped = images.read_image_folder(path, data.image_size, data.channels)
            extra["unreadable"] = skipped
        return examples, labels, origin, extra
    if path.is_dir():
        raise UserError(f"data.source: {path} is a folder; tabular_classification needs a .csv, .parquet or .jsonl file.")
    frame = tabular.read_table(path)
    tabular.check_column(frame, data.label, "label", origin)
    unlabeled = frame[data.label].isna()
    if unlabeled.all():
        raise UserError(f"{origin}: label column '{data.label}' is empty in every row.")
    if unlabeled.any():
        extra["dropped_unlabeled_rows"] = int(unlabeled.sum())
        frame = frame[~unlabeled]
    labels = frame[data.label]
    if pd.api.types.is_float_dtype(labels) and (labels == labels.round()).all():
        labels = labels.astype(int)  # "1.0" read from a column with gaps is class "1"
    features = _feature_columns(frame, data, origin)
    return frame[features], labels.astype(str).to_numpy(), origin, extra


def _feature_columns(frame: pd.DataFrame, data: DataConfig, origin: str) -> list[str]:
    for column in data.drop + (data.features or []):
        tabular.check_column(frame, column, "feature" if column in (data.features or []) else "dropped", origin)
    columns = data.features or [c for c in frame.columns if c != data.label and c not in data.drop]
    if not columns:
        raise UserError(f"{origin}: no feature columns left besides the label '{data.label}'.")
    return columns


def _load_builtin(name: str, task: str):
    from sklearn import datasets

    if name not in BUILTINS:
        raise UserError(f"data.source: unknown built-in 'builtin:{name}'.{did_you_mean(name, BUILTINS)} "
                        f"Built-ins: {', '.join('builtin:' + b for b in BUILTINS)}.")
    bunch = getattr(datasets, f"load_{name}")()
    names = [str(n) for n in bunch.target_names] if name != "digits" else [str(i) for i in range(10)]
    labels = np.array([names[t] for t in bunch.target])
    if task == "image_classification":
        if name != "digits":
            raise UserError(f"data.source: builtin:{name} is a table; use task: tabular_classification.")
        return (bunch.images[:, None] / 16.0).astype(np.float32), labels, "builtin:digits"
    frame = pd.DataFrame(bunch.data, columns=[str(c) for c in bunch.feature_names])
    return frame, labels, f"builtin:{name}"


def prepare(config: Config, base_dir: Path) -> Prepared:
    """Load, validate, split and encode the data of a config."""
    data = config.data
    examples, labels, origin, report = load_raw(data, config.task, base_dir)
    report["source"] = origin
    is_table = isinstance(examples, pd.DataFrame)
    if is_table:
        kept, report["missing"] = tabular.check_missing(examples, data.missing, data.max_missing_fraction, origin)
        labels, examples = labels[examples.index.isin(kept.index)], kept
        if examples.empty:
            raise UserError(f"{origin}: no rows left after dropping rows with empty cells (data.missing: drop); "
                            f"empty cells per column: {report['missing']}. Use data.missing: impute.")
    hashes = validate.example_hashes(examples)
    duplicates = validate.duplicate_mask(hashes)
    report["duplicates"] = int(duplicates.sum())
    if data.dedupe and duplicates.any():
        keep = ~duplicates
        examples = examples[keep] if not is_table else examples.iloc[np.flatnonzero(keep)]
        labels, hashes = labels[keep], hashes[keep]
        report["dropped_duplicates"] = int(duplicates.sum())
    label_names = sorted_labels(labels)
    if len(label_names) < 2:
        raise UserError(f"{origin}: only one class ({label_names[0]!r}) in the labels; a classifier needs at least two.")
    targets = pd.Categorical(labels, categories=label_names).codes.astype(np.int64)
    split = split_indices(labels, data.split.val, data.split.test, data.split.seed, data.split.stratify)
    report.update(n_examples=len(labels), splits={k: int(len(v)) for k, v in split.items()},
                  leakage=validate.leakage(hashes, split))
    report["class_counts"], report["warnings"] = validate.class_balance(labels, label_names)
    _warn_about(report)

    if is_table:
        encoder = tabular.TableEncoder().fit(examples.iloc[split["train"]])
        features = encoder.transform(examples, origin)
        preprocessing = {"kind": "table", **encoder.spec}
        display = examples.iloc[split["test"]].to_dict(orient="records")
    else:
        features = examples
        preprocessing = {"kind": "image", "size": list(examples.shape[2:]), "channels": int(examples.shape[1])}
        display = list(examples[split["test"]])
    part = {k: ArrayData(features[v], targets[v]) if len(v) else None for k, v in split.items()}
    return Prepared(part["train"], part["val"], part["test"], label_names, tuple(features.shape[1:]),
                    preprocessing, report, display)


def _warn_about(report: dict) -> None:
    leaks = report["leakage"]
    if leaks["train_test"]:
        report["warnings"].append(f"leakage: {leaks['train_test']} test examples also appear in the training split; "
                                  "test scores are optimistic. Set data.dedupe: true to remove exact duplicates.")
    if report.get("duplicates"):
        report["warnings"].append(f"{report['duplicates']} exact duplicate examples in the data.")
    for message in report["warnings"]:
        warnings.warn(message, stacklevel=3)
