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
from modelfoundry.data import images, tabular, text, validate
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
                idx = order[start : start + batch_size]
                yield self.inputs[idx], self.targets[idx]
        else:
            for start in range(0, n, batch_size):
                yield self.inputs[start : start + batch_size], self.targets[start : start + batch_size]


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
    test_display: list = field(
        default_factory=list
    )  # per test example: image (C,H,W) in [0,1], row dict or text
    files: dict[str, str] = field(default_factory=dict)  # extra files for the model package (tokenizer.json)


def resolve_source(source: str, base_dir: Path, key: str = "data.source") -> Path:
    """Relative paths are tried against the working folder first, then the config file's folder;
    `key` names the config key in the message (data.test_source, data.feedback.source, ...)."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if not path.is_absolute() and (base_dir / path).exists():
        return base_dir / path
    places = " and ".join(dict.fromkeys(str(p) for p in (Path.cwd(), base_dir)))
    raise UserError(
        f"{key}: '{source}' not found (looked in {places}). Give an existing "
        f"image folder or .csv/.parquet/.jsonl file, or one of: "
        + ", ".join(f"builtin:{b}" for b in BUILTINS)
        + "."
    )


def load_raw(
    data: DataConfig,
    task: str,
    base_dir: Path,
    source: str | None = None,
    image_shape: tuple[int, ...] | None = None,
    key: str = "data.source",
):
    """Returns (examples, labels as str, origin, extra report fields). Images: (N, C, H, W) array; tables: DataFrame.

    `source` is data.source unless given (data.val_source / data.test_source / data.feedback.source);
    `image_shape` (C, H, W) resizes images to match another source's.
    """
    extra: dict = {}
    source = source or data.source
    if source.startswith("builtin:"):
        return _load_builtin(source.removeprefix("builtin:"), task) + (extra,)
    path = resolve_source(source, base_dir, key)
    origin = str(path)
    if task == "image_classification":
        if not path.is_dir():
            raise UserError(
                f"data.source: {path} is a file; image_classification needs a folder with one "
                "sub-folder per class, or an MNIST IDX folder."
            )
        if list(path.glob("*idx3-ubyte*")):
            examples, labels, _ = images.read_idx_folder(path)
        else:
            size, channels = (
                (image_shape[1:], image_shape[0]) if image_shape else (data.image_size, data.channels)
            )
            examples, labels, _, skipped = images.read_image_folder(path, size, channels)
            extra["unreadable"] = skipped
        return examples, labels, origin, extra
    if task == "text_classification":
        texts, labels = text.read_text_table(path, data.text, data.label, data.quoting)
        texts, labels = text.clean_texts(texts, labels, data.privacy.pii, origin, extra)
        return np.array(texts, dtype=object), labels, origin, extra
    if path.is_dir():
        raise UserError(
            f"data.source: {path} is a folder; tabular_classification needs a .csv, .parquet or .jsonl file."
        )
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
    features = tabular.feature_columns(frame, data, origin)
    return frame[features], labels.astype(str).to_numpy(), origin, extra


def _load_builtin(name: str, task: str):
    from sklearn import datasets

    if name not in BUILTINS:
        raise UserError(
            f"data.source: unknown built-in 'builtin:{name}'.{did_you_mean(name, BUILTINS)} "
            f"Built-ins: {', '.join('builtin:' + b for b in BUILTINS)}."
        )
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
    streamed = _streamed(config, base_dir)
    if streamed is not None:
        return streamed
    loaded = {}
    for part, source in sources(data).items():
        main = loaded.get("train")
        shape = main[0].shape[1:] if part == "feedback" and isinstance(main[0], np.ndarray) else None
        key = {"train": "data.source", "feedback": "data.feedback.source"}.get(part, f"data.{part}_source")
        loaded[part] = load_raw(data, config.task, base_dir, source, shape, key)
    examples, labels, origin, _ = loaded["train"]
    report = merge_counts([v[3] for v in loaded.values()])
    if len(loaded) > 1:
        examples = (
            pd.concat([v[0] for v in loaded.values()], ignore_index=True)
            if isinstance(examples, pd.DataFrame)
            else _concat_images([(v[0], v[2]) for v in loaded.values()])
        )
        labels = np.concatenate([v[1] for v in loaded.values()])
        report["sources"] = {part: v[2] for part, v in loaded.items()}
    sizes = {part: len(v[1]) for part, v in loaded.items()}
    report["source"] = origin
    is_table = isinstance(examples, pd.DataFrame)
    part_of = np.repeat(list(sizes), list(sizes.values()))  # which file each example came from
    if is_table:
        kept, report["missing"] = tabular.check_missing(
            examples, data.missing, data.max_missing_fraction, origin
        )
        kept_mask = examples.index.isin(kept.index)
        labels, examples, part_of = labels[kept_mask], kept, part_of[kept_mask]
        if examples.empty:
            raise UserError(
                f"{origin}: no rows left after dropping rows with empty cells (data.missing: drop); "
                f"empty cells per column: {report['missing']}. Use data.missing: impute."
            )
    hashes = validate.example_hashes(examples)
    duplicates = validate.duplicate_mask(hashes)
    report["duplicates"] = int(duplicates.sum())
    if data.dedupe and duplicates.any():
        keep = ~duplicates
        examples = examples[keep] if not is_table else examples.iloc[np.flatnonzero(keep)]
        labels, hashes, part_of = labels[keep], hashes[keep], part_of[keep]
        report["dropped_duplicates"] = int(duplicates.sum())
    label_names = validate.sorted_labels(labels)
    if len(label_names) < 2:
        raise UserError(
            f"{origin}: only one class ({label_names[0]!r}) in the labels; a classifier needs at least two."
        )
    _check_known_labels(labels, part_of, label_names, report)
    targets = pd.Categorical(labels, categories=label_names).codes.astype(np.int64)
    split = split_parts(labels, part_of, data)
    if "feedback" in sizes:
        report["feedback"] = {"examples": int((part_of == "feedback").sum()), "weight": data.feedback.weight}
    report.update(
        n_examples=len(labels),
        splits={k: len(v) for k, v in split.items()},
        leakage=validate.leakage(hashes, split),
    )
    report["class_counts"], balance_warnings = validate.class_balance(labels, label_names)
    report["warnings"] = report.get("warnings", []) + balance_warnings

    files: dict[str, str] = {}
    if config.task == "text_classification":
        tokenizer, max_length = text.tokenizer_for(config, base_dir)
        ids, report["truncated"] = text.tokenize(tokenizer, list(examples), max_length)
        if report["truncated"]:
            report["warnings"].append(
                f"{report['truncated']} texts are longer than data.max_length={max_length} "
                "tokens and were truncated."
            )
        report["tokens"] = text.describe_lengths(torch.tensor([len(t) for t in ids]))
        _warn_about(report)
        preprocessing = {
            "kind": "text",
            "text_column": data.text,
            "max_length": max_length,
            "pii": data.privacy.pii,
            "quoting": data.quoting,
            **text.tokenizer_spec(tokenizer),
        }
        files["tokenizer.json"] = tokenizer.to_str()
        pad = preprocessing["pad_id"]
        part = {
            k: text.TextData([ids[i] for i in v], targets[v], pad) if len(v) else None
            for k, v in split.items()
        }
        display = list(examples[split["test"]])
        for name in ("val", "test"):  # shortest first: evaluation batches carry the least padding
            if part[name] is not None:
                part[name], order = part[name].sorted_by_length()
                display = [display[i] for i in order] if name == "test" else display
        return Prepared(
            part["train"],
            part["val"],
            part["test"],
            label_names,
            (max_length,),
            preprocessing,
            report,
            display,
            files,
        )
    if is_table:
        report["warnings"] += tabular.numbers_with_stray_text(examples, origin)
    _warn_about(report)
    if is_table:
        encoder = tabular.TableEncoder().fit(examples.iloc[split["train"]])
        features = encoder.transform(examples, origin)
        preprocessing = {"kind": "table", **encoder.spec}
        display = examples.iloc[split["test"]].to_dict(orient="records")
    else:
        features = examples
        preprocessing = {
            "kind": "image",
            "size": list(examples.shape[2:]),
            "channels": int(examples.shape[1]),
        }
        display = list(examples[split["test"]])
    part = {k: ArrayData(features[v], targets[v]) if len(v) else None for k, v in split.items()}
    return Prepared(
        part["train"],
        part["val"],
        part["test"],
        label_names,
        tuple(features.shape[1:]),
        preprocessing,
        report,
        display,
        files,
    )


def _streamed(config: Config, base_dir: Path) -> Prepared | None:
    """A table file read in chunks, or an image folder decoded per batch (data.streaming); None: load it whole."""
    from modelfoundry.data import lazy_images, stream

    data = config.data
    if data.streaming is False or data.source.startswith("builtin:"):
        return None
    path = resolve_source(data.source, base_dir)
    is_table = config.task != "image_classification"  # a table of numbers, or of texts
    if is_table and path.is_dir() or not is_table and (not path.is_dir() or list(path.glob("*idx3-ubyte*"))):
        return None  # not a table file / an MNIST IDX folder (read whole): load_raw says what is wrong, if anything
    big = (
        stream.wanted(data.streaming, path)
        if is_table
        else data.streaming is True
        or lazy_images.decoded_bytes(path, data.channels, data.image_size) >= stream.AUTO_BYTES
    )
    if not big:
        return None
    others = [
        k
        for k, v in (
            ("data.val_source", data.val_source),
            ("data.test_source", data.test_source),
            ("data.feedback", data.feedback),
        )
        if v
    ]
    if others:
        raise UserError(
            f"data.streaming reads one {'table file' if is_table else 'image folder'}; "
            f"{', '.join(others)} need it off. Set data.streaming: false, or put every example in "
            "data.source and let data.split divide them."
        )
    if not is_table:
        return _lazy_images(path, data)
    if config.task == "text_classification":
        return _streamed_texts(path, config, base_dir)
    parts = stream.prepare_streamed(path, data, str(path))
    report = parts["report"]
    report["class_counts"], report["warnings"] = validate.class_balance(parts["counts"], parts["labels"])
    _warn_about(report)
    splits = parts["splits"]
    return Prepared(
        splits["train"],
        splits["val"],
        splits["test"],
        parts["labels"],
        (parts["width"],),
        {"kind": "table", **parts["encoder"].spec},
        report,
        parts["display"],
    )


def _streamed_texts(path: Path, config: Config, base_dir: Path) -> Prepared:
    """A text table tokenized in one chunked pass into scratch files (data/stream_text.py)."""
    from modelfoundry.data import stream_text

    data = config.data
    tokenizer, max_length = text.tokenizer_for(config, base_dir)
    spec = text.tokenizer_spec(tokenizer)
    parts = stream_text.prepare_streamed_text(path, data, tokenizer, max_length, spec["pad_id"])
    report = parts["report"]
    report["class_counts"], balance_warnings = validate.class_balance(parts["counts"], parts["labels"])
    report["warnings"] += balance_warnings
    _warn_about(report)
    preprocessing = {
        "kind": "text",
        "text_column": data.text,
        "max_length": max_length,
        "pii": data.privacy.pii,
        "quoting": data.quoting,
        **spec,
    }
    splits = parts["splits"]
    return Prepared(
        splits["train"],
        splits["val"],
        splits["test"],
        parts["labels"],
        (max_length,),
        preprocessing,
        report,
        parts["display"],
        {"tokenizer.json": tokenizer.to_str()},
    )


def _lazy_images(path: Path, data) -> Prepared:
    """An image folder checked and hashed file by file, decoded per batch in worker processes; the
    split and batches are the in-memory path's. Duplicates are files with the same bytes."""
    from modelfoundry.data import lazy_images

    paths, labels, hashes, shape, skipped = lazy_images.scan(path, data.image_size, data.channels)
    report: dict = {
        "source": str(path),
        "unreadable": skipped,
        "streaming": {"images": "decoded per batch by worker processes", "workers": lazy_images.WORKERS},
    }
    duplicates = validate.duplicate_mask(hashes)
    report["duplicates"] = int(duplicates.sum())
    if data.dedupe and duplicates.any():
        keep = np.flatnonzero(~duplicates)
        paths, labels, hashes = [paths[i] for i in keep], labels[keep], hashes[keep]
        report["dropped_duplicates"] = int(duplicates.sum())
    label_names = validate.sorted_labels(labels)
    if len(label_names) < 2:
        raise UserError(
            f"{path}: only one class ({label_names[0]!r}) in the labels; a classifier needs at least two."
        )
    targets = pd.Categorical(labels, categories=label_names).codes.astype(np.int64)
    split = split_parts(labels, np.repeat("train", len(labels)), data)
    report.update(
        n_examples=len(labels),
        splits={k: len(v) for k, v in split.items()},
        leakage=validate.leakage(hashes, split),
    )
    report["class_counts"], report["warnings"] = validate.class_balance(labels, label_names)
    _warn_about(report)
    part = {
        k: lazy_images.LazyImages([paths[i] for i in v], targets[v], shape) if len(v) else None
        for k, v in split.items()
    }
    display = lazy_images.LazyDisplay([paths[i] for i in split["test"]], shape)
    return Prepared(
        part["train"],
        part["val"],
        part["test"],
        label_names,
        shape,
        {"kind": "image", "size": list(shape[1:]), "channels": shape[0]},
        report,
        display,
    )


def merge_counts(reports: list[dict]) -> dict:
    """The report fields of several sources as one: counts are added, lists joined."""
    merged: dict = {}
    for report in reports:
        for key, value in report.items():
            if isinstance(value, dict):
                inner = merged.setdefault(key, {})
                for k, v in value.items():
                    inner[k] = inner.get(k, 0) + v
            elif isinstance(value, list):
                merged[key] = merged.get(key, []) + value
            else:
                merged[key] = merged.get(key, 0) + value
    return merged


def sources(data: DataConfig) -> dict[str, str]:
    """The file (or folder) of each part that has its own: always train, then val / test if given."""
    found = {
        "train": data.source,
        "val": data.val_source,
        "test": data.test_source,
        "feedback": data.feedback and data.feedback.source,
    }
    return {part: source for part, source in found.items() if source}


def split_parts(labels: np.ndarray, part_of: np.ndarray, data: DataConfig) -> dict[str, np.ndarray]:
    """Indices of train / val / test. A part with its own file takes that file's examples; the
    others are split (stratified, seeded) from the main source."""
    main = np.flatnonzero(part_of == "train")
    own = set(part_of.tolist())
    split = split_indices(
        labels[main],
        0 if "val" in own else data.split.val,
        0 if "test" in own else data.split.test,
        data.split.seed,
        data.split.stratify,
    )
    split = {name: main[idx] for name, idx in split.items()}
    for name in ("val", "test"):
        if name in own:
            split[name] = np.flatnonzero(part_of == name)
    if "feedback" in own:  # corrections train only, each repeated `weight` times
        split["train"] = np.concatenate(
            [split["train"], np.repeat(np.flatnonzero(part_of == "feedback"), data.feedback.weight)]
        )
    return split


def _check_known_labels(
    labels: np.ndarray, part_of: np.ndarray, label_names: list[str], report: dict
) -> None:
    """A class that is only in a validation or test file can never be predicted: say so."""
    trained = set(labels[part_of == "train"].tolist())
    for part in ("val", "test"):
        unseen = sorted(set(labels[part_of == part].tolist()) - trained)
        if unseen:
            raise UserError(
                f"{report['sources'][part]}: label(s) {', '.join(map(repr, unseen[:5]))} never appear in the "
                f"training file {report['sources']['train']}; a model cannot learn a class it never sees. "
                "Add examples of it to the training file or remove those rows."
            )


def _concat_images(parts: list[tuple[np.ndarray, str]]) -> np.ndarray:
    shapes = {arr.shape[1:] for arr, _ in parts}
    if len(shapes) > 1:
        listing = ", ".join(f"{origin}: {arr.shape[1:]}" for arr, origin in parts)
        raise UserError(
            f"data: the image sources have different shapes ({listing}); set data.image_size and "
            "data.channels so that all are resized alike."
        )
    return np.concatenate([arr for arr, _ in parts])


def _warn_about(report: dict) -> None:
    leaks = report["leakage"]
    if leaks["train_test"]:
        report["warnings"].append(
            f"leakage: {leaks['train_test']} test examples also appear in the training split; "
            "test scores are optimistic. Set data.dedupe: true to remove exact duplicates."
        )
    if report.get("duplicates"):
        report["warnings"].append(f"{report['duplicates']} exact duplicate examples in the data.")
    for message in report["warnings"]:
        warnings.warn(message, stacklevel=3)
