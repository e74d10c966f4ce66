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
from modelfoundry.data import tabular, text, validate
from modelfoundry.data.split import split_indices
from modelfoundry.errors import UserError, did_you_mean
from modelfoundry.tasks import get_task

BUILTINS = ("digits", "breast_cancer", "wine", "iris", "diabetes")


class ArrayData:
    """Examples held in memory as tensors; `batches` yields (inputs, targets) for one epoch."""

    def __init__(self, inputs: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor):
        self.inputs = torch.as_tensor(inputs, dtype=torch.float32)
        self.targets = as_targets(targets)

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


def as_targets(targets) -> torch.Tensor:
    """Class indices as int64; numbers (regression, standardised) as float32."""
    targets = torch.as_tensor(targets)
    return targets.float() if targets.is_floating_point() else targets.long()


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
    # what the package keeps about the target (regression: mean, std)
    target: dict = field(default_factory=dict)
    # evaluate.sensitive: split name -> the sensitive columns of its rows (strings), never fed to the model
    groups: dict = field(default_factory=dict)


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
    task,
    base_dir: Path,
    source: str | None = None,
    image_shape: tuple[int, ...] | None = None,
    key: str = "data.source",
):
    """Returns (examples, raw targets, origin, extra report fields). Images: (N, C, H, W) array; tables:
    DataFrame.

    `task` is the config's task object (tasks/), which reads its own kind of source. `source` is
    data.source unless given (data.val_source / data.test_source / data.feedback.source);
    `image_shape` (C, H, W) resizes images to match another source's.
    """
    source = source or data.source
    if source.startswith("builtin:"):
        return _load_builtin(source.removeprefix("builtin:"), task) + ({},)
    return task.load(data, base_dir, resolve_source(source, base_dir, key), image_shape)


def _load_builtin(name: str, task):
    from sklearn import datasets

    if name not in BUILTINS:
        raise UserError(
            f"data.source: unknown built-in 'builtin:{name}'.{did_you_mean(name, BUILTINS)} "
            f"Built-ins: {', '.join('builtin:' + b for b in BUILTINS)}."
        )
    bunch = getattr(datasets, f"load_{name}")()
    return task.load_builtin(name, bunch)


def prepare(config: Config, base_dir: Path, resplit=None) -> Prepared:
    """Load, validate, split and encode the data of a config.

    `resplit(split, strata, part_of)`, when given, replaces the seeded split (a dict of index arrays
    train/val/test) before anything is fitted on its training part: k-fold cross-validation
    (training/folds.py) trains each fold this way. Data read in chunks (streamed) is refused with it."""
    data = config.data
    task = get_task(config.task)
    own = task.prepare_data(config, base_dir, resplit)  # a task whose data are not labelled examples
    if own is not None:
        return own
    streamed = _streamed(config, base_dir, task, refuse=resplit is not None)
    if streamed is not None:
        return streamed
    loaded = {}
    for part, source in sources(data).items():
        main = loaded.get("train")
        shape = main[0].shape[1:] if part == "feedback" and isinstance(main[0], np.ndarray) else None
        key = {"train": "data.source", "feedback": "data.feedback.source"}.get(part, f"data.{part}_source")
        loaded[part] = load_raw(data, task, base_dir, source, shape, key)
    examples, labels, origin, _ = loaded["train"]
    groups = sensitive_columns(config.evaluate.sensitive, loaded, task)
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
        groups = groups[kept_mask] if groups is not None else None
        if examples.empty:
            raise UserError(
                f"{origin}: no rows left after dropping rows with empty cells (data.missing: drop); "
                f"empty cells per column: {report['missing']}. Use data.missing: impute."
            )
    keep, targets, split = targets_and_split(
        task, labels, validate.example_hashes(examples), part_of, data, report, origin, resplit
    )
    if not keep.all():
        examples = examples[keep] if not is_table else examples.iloc[np.flatnonzero(keep)]
        groups = groups[keep] if groups is not None else None
    if "feedback" in sizes:
        feedback = int((part_of[keep] == "feedback").sum())
        report["feedback"] = {"examples": feedback, "weight": data.feedback.weight}
    parts, input_shape, preprocessing, files, display = task.encode(
        examples, targets, split, config, base_dir, report
    )
    _warn_about(report)
    return Prepared(
        parts["train"],
        parts["val"],
        parts["test"],
        targets.labels,
        input_shape,
        preprocessing,
        report,
        display,
        files,
        targets.spec,
        split_groups(groups, split, parts),
    )


def split_groups(groups: pd.DataFrame | None, split: dict, parts: dict) -> dict:
    """Each split's rows of the sensitive columns, in the order of its examples: a split the task reordered
    (texts, shortest first) says how in `split_order`."""
    if groups is None:
        return {}
    out = {}
    for name, index in split.items():
        order = getattr(parts[name], "split_order", None)
        out[name] = groups.iloc[index if order is None else index[order]].reset_index(drop=True)
    return out


def sensitive_columns(columns: list[str], loaded: dict, task) -> pd.DataFrame | None:
    """The evaluate.sensitive columns of every source's rows, in the order of their examples, as strings
    (an empty cell is the group "(missing)"); None when none are asked for. Each source's reader keeps its
    whole table under "columns" of its report fields (popped here: the report is JSON)."""
    frames = [v[3].pop("columns", None) for v in loaded.values()]
    if not columns:
        return None
    from modelfoundry.evaluate.fairness import check_sensitive, group_labels

    frames = [
        f if f is not None or not isinstance(v[0], pd.DataFrame) else v[0]
        for f, v in zip(frames, loaded.values())
    ]
    for (_, _, origin, _), frame in zip(loaded.values(), frames):
        if frame is None:
            raise UserError(
                f"evaluate.sensitive: {task.name} does not keep the columns of {origin} aside, so the "
                "fairness audit has no groups to read; it audits tables and text tables. Remove "
                "evaluate.sensitive."
            )
        check_sensitive(frame, columns, origin, two_groups=len(frames) == 1)
    groups = pd.concat([group_labels(f[columns]) for f in frames], ignore_index=True)
    if len(frames) > 1:
        check_sensitive(groups, columns, "the data's sources together")
    return groups


def _streamed(config: Config, base_dir: Path, task, refuse: bool = False) -> Prepared | None:
    """A table file read in chunks, or an image folder decoded per batch (data.streaming); None: load it
    whole. `refuse`: the caller needs the data in memory (k-fold cross-validation)."""
    data = config.data
    if data.streaming is False or data.source.startswith("builtin:"):
        return None
    path = resolve_source(data.source, base_dir)
    if not task.streams(path, data):
        # small, or not a source it streams: load_raw reads it (and says what is wrong, if anything)
        return None
    if config.evaluate.sensitive:
        raise UserError(
            "evaluate.sensitive: the fairness audit keeps the sensitive columns beside rows held in memory; "
            f"{path} would be streamed. Set data.streaming: false."
        )
    if refuse:
        raise UserError(
            f"train.folds (--folds): k-fold cross-validation holds every example in memory, and "
            f"{data.source} is streamed (data.streaming: {data.streaming}). Set data.streaming: false if "
            "it fits in memory, or train without --folds."
        )
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
            f"data.streaming reads one {'image folder' if path.is_dir() else 'table file'}; "
            f"{', '.join(others)} need it off. Set data.streaming: false, or put every example in "
            "data.source and let data.split divide them."
        )
    return task.streamed(path, config, base_dir)


def streamed_table(path: Path, config: Config, base_dir: Path) -> Prepared:
    """A table file read in chunks by Arrow and encoded once to a scratch file (data/stream.py)."""
    from modelfoundry.data import stream

    parts = stream.prepare_streamed(path, config.data, str(path), get_task(config.task))
    report = parts["report"]
    report.setdefault("warnings", [])
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
        target=parts["target"],
    )


def streamed_texts(path: Path, config: Config, base_dir: Path) -> Prepared:
    """A text table tokenized in one chunked pass into scratch files (data/stream_text.py)."""
    from modelfoundry.data import stream_text

    data = config.data
    tokenizer, max_length = text.tokenizer_for(config, base_dir)
    spec = text.tokenizer_spec(tokenizer)
    parts = stream_text.prepare_streamed_text(
        path, data, get_task(config.task), tokenizer, max_length, spec["pad_id"]
    )
    report = parts["report"]
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


def streamed_images(path: Path, config: Config, base_dir: Path) -> Prepared:
    """An image folder checked and hashed file by file, decoded per batch in worker processes; the
    split and batches are the in-memory path's. Duplicates are files with the same bytes."""
    from modelfoundry.data import lazy_images

    data, task = config.data, get_task(config.task)
    paths, labels, hashes, shape, skipped = lazy_images.scan(path, data.image_size, data.channels)
    report: dict = {
        "source": str(path),
        "unreadable": skipped,
        "streaming": {"images": "decoded per batch by worker processes", "workers": lazy_images.WORKERS},
    }
    keep, targets, split = targets_and_split(
        task, labels, hashes, np.repeat("train", len(labels)), data, report, str(path)
    )
    paths = [p for p, kept in zip(paths, keep) if kept]
    _warn_about(report)
    part = {
        k: lazy_images.LazyImages([paths[i] for i in v], targets.values[v], shape) if len(v) else None
        for k, v in split.items()
    }
    display = lazy_images.LazyDisplay([paths[i] for i in split["test"]], shape)
    return Prepared(
        part["train"],
        part["val"],
        part["test"],
        targets.labels,
        shape,
        {"kind": "image", "size": list(shape[1:]), "channels": shape[0]},
        report,
        display,
    )


def targets_and_split(
    task, labels: np.ndarray, hashes: np.ndarray, part_of: np.ndarray, data, report, origin, resplit=None
):
    """The rules of every reader that holds its examples' labels: duplicates counted (and dropped with
    data.dedupe), targets checked, the seeded stratified split (or `resplit`'s, see `prepare`), the targets
    fitted on its training part, and the split's leakage. Returns (which examples are kept, their Targets,
    the split's indices into them)."""
    keep = validate.drop_duplicates(hashes, data.dedupe, report)
    labels, hashes, part_of = labels[keep], hashes[keep], part_of[keep]
    targets = task.make_targets(labels, part_of, report, origin, data)
    split = split_parts(targets.strata, part_of, data)
    if resplit is not None:
        split = resplit(split, targets.strata, part_of)
    task.fit_targets(targets, split["train"])
    report["n_examples"] = len(labels)
    validate.report_split(report, hashes, split)
    report.setdefault("warnings", [])
    return keep, targets, split


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
