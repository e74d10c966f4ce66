"""A training run from end to end: config -> data -> model -> fit -> evaluate -> package -> report.

A run is a folder `runs/<run-id>/` holding config.yaml, data_report.json, metrics.json,
report.html, checkpoints/, tensorboard/ and model/ (the package `load()` reads).
"""

from __future__ import annotations

import io
import json
import math
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

import numpy as np
import torch
import yaml
from rich.console import Console

from modelfoundry.config import Config, config_to_dict, load_config
from modelfoundry.data import images, text
from modelfoundry.data.prepare import Prepared, prepare
from modelfoundry.errors import UserError
from modelfoundry.evaluate.metrics import classification_metrics, worst_mistakes
from modelfoundry.models.registry import build_model
from modelfoundry.plan.check import plan_vs_measured
from modelfoundry.predictor import save_package
from modelfoundry.runfiles import (
    CALIBRATION,
    HELDOUT,
    atomic_write,
    atomic_write_json,
    package_folder,
    remove_leftovers,
    run_folder,
    runs_root,
    save_sample,
)
from modelfoundry.store.registry import Registry
from modelfoundry.training import distributed
from modelfoundry.training.loop import fit, predict_logits


@dataclass
class Run:
    id: str
    path: Path
    metrics: dict
    version: int | None = None  # the model version in the registry

    def __repr__(self) -> str:
        test = self.metrics.get("test", {})
        return f"Run(id={self.id!r}, path='{self.path}', test_accuracy={test.get('accuracy')})"


def new_run_id(config: Config) -> str:
    stem = (
        config.name or f"{config.data.source.split(':')[-1].split('/')[-1].split('.')[0]}-{config.model.name}"
    )
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in stem)[:40]
    return f"{datetime.now():%Y%m%d-%H%M%S}-{stem}-{secrets.token_hex(2)}"


def train(
    config: str | Path | dict,
    overrides: list[str] | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    console: Console | None = None,
    parent_version: int | None = None,
    variant: str = "base",
) -> Run:
    """Train, evaluate and package a model, registered as a new model version; returns the run with its metrics.

    `parent_version`: the version this run retrains (`foundry retrain`) or compresses (`variant`
    "distilled"); the new version joins its lineage. Under torchrun (DDP) every process calls this; rank
    0 alone writes the run and returns its metrics, the other ranks return the same id and path without.
    """
    console = console or Console(stderr=True)
    cfg, base_dir = load_config(config, overrides)
    device = distributed.init(cfg.train.device)  # DDP: under torchrun, join the process group (gloo or nccl)
    if not distributed.is_main():  # DDP: the other ranks train beside rank 0 and write and print nothing
        path = Path(distributed.broadcast_object())
        _run(cfg, base_dir, None, resume, Console(file=io.StringIO()), device)
        return Run(path.name, path, {})
    if resume and run_dir is None:
        run_dir = _interrupted_run(cfg)
        console.print(f"resuming {run_dir}", highlight=False)
    path = Path(run_dir) if run_dir else runs_root() / new_run_id(cfg)
    if resume and not (path / "checkpoints").is_dir():
        raise UserError(
            f"--resume: {path} has no checkpoints/ folder, so there is nothing to resume. "
            "Start the run again without --resume."
        )
    distributed.broadcast_object(str(path))  # DDP: one run folder, named by rank 0
    path.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)  # half-written files of a killed run; the real files are intact
    run_id = path.name
    resolved = config_to_dict(cfg)
    atomic_write(path / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    registry = Registry()
    registry.start(run_id, cfg.name, cfg.task, cfg.model.name, path, resolved)
    try:
        metrics, timings = _run(cfg, base_dir, path, resume, console, device)
    except BaseException as exc:
        registry.finish(run_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    headline = {
        f"{split}_{k}": v[k]
        for split, v in metrics.items()
        if split in ("val", "test")
        for k in ("accuracy", "f1_macro", "roc_auc")
        if k in v
    }
    registry.finish(run_id, "completed", metrics=headline, timings=timings)
    from modelfoundry.store.models import ModelStore

    version = ModelStore(registry).register(
        run_id,
        path / "model",
        cfg.task,
        json.loads((path / "model" / "model.json").read_text())["labels"],
        headline,
        variant,
        parent_version,
    )
    console.print(f"registered model version {version.name}", highlight=False)
    return Run(run_id, path, metrics, version.id)


def _typical_example(train) -> torch.Tensor:
    """One example as a batch of one, for counting FLOPs: in-memory data says which (texts: the median
    length); streamed data gives its first."""
    return train.inputs[:1] if hasattr(train, "inputs") else next(iter(train.batches(1)))[0]


def _interrupted_run(cfg: Config) -> Path:
    """`--resume` without `--run-dir`: the newest run of this very config that stopped (killed) or failed
    (interrupted) and left checkpoints behind."""
    wanted = json.dumps(config_to_dict(cfg), sort_keys=True, default=str)
    for record in Registry().list(limit=200):
        if (
            record.shown_status in ("stopped", "failed")
            and (Path(record.path) / "checkpoints").is_dir()
            and json.dumps(record.config, sort_keys=True, default=str) == wanted
        ):
            return Path(record.path)
    raise UserError(
        "--resume: no stopped or interrupted run of this config with checkpoints in the registry. "
        "Give the run folder with --run-dir (`foundry runs list` shows the runs), or start anew "
        "without --resume."
    )


def _run(
    cfg: Config, base_dir: Path, path: Path | None, resume: bool, console: Console, device: torch.device
) -> tuple[dict, dict]:
    """`path` None: a DDP rank other than 0, which trains beside rank 0 and writes nothing."""
    timings = {}
    clock = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    data = prepare(cfg, base_dir)
    if path:
        atomic_write_json(path / "data_report.json", data.report)
    timings["data"] = time.perf_counter() - clock
    console.print(
        f"data: {data.report['splits']} examples (train/val/test), {len(data.labels)} classes, "
        + (
            f"up to {data.input_shape[0]} tokens per text"
            if data.preprocessing["kind"] == "text"
            else f"input {data.input_shape}"
        ),
        highlight=False,
    )

    options = dict(cfg.model.model_extra or {})
    if "path" in options:  # a pretrained model folder, relative to the working folder or the config
        options["path"] = text.resolve_path(options["path"], base_dir)
    pre = data.preprocessing
    text_spec = {k: pre[k] for k in ("vocab_size", "pad_id")} if pre["kind"] == "text" else None
    model = build_model(cfg.model.name, data.input_shape, len(data.labels), text_spec, **options)
    console.print(
        f"model: {cfg.model.name} with {sum(p.numel() for p in model.parameters()):,} parameters on {device}",
        highlight=False,
    )
    setup = None
    if distributed.world_size() > 1:  # DDP: how each batch is split, and the effective batch
        line, setup = distributed.describe(cfg.train, len(data.train))
        console.print(line, highlight=False)
    clock = time.perf_counter()
    splits = {
        name: getattr(data, name) and getattr(data, name).to(device) for name in ("train", "val", "test")
    }
    aug = cfg.data.augment
    augment = (
        partial(images.augment, crop_padding=aug.crop_padding, flip=aug.flip, rotation=aug.rotation)
        if cfg.task == "image_classification" and (aug.crop_padding or aug.flip or aug.rotation)
        else None
    )
    teacher = _teacher(cfg, base_dir, data, device, console) if cfg.train.distill else None
    result = fit(
        model,
        splits["train"],
        splits["val"],
        cfg.train,
        device=device,
        checkpoint_dir=path and path / "checkpoints",
        resume=resume,
        log_dir=path and path / "tensorboard",
        augment=augment,
        console=console,
        teacher=teacher,
    )
    timings["train"] = time.perf_counter() - clock
    if path is None:
        return {}, timings

    clock = time.perf_counter()
    metrics: dict = {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "precision": result.precision,
    }
    if setup:
        metrics["distributed"] = setup
    probabilities = {}
    for name in ("val", "test"):
        if splits[name] is not None:
            probabilities[name] = torch.softmax(predict_logits(model, splits[name]), 1).cpu().numpy()
            metrics[name] = classification_metrics(
                probabilities[name], getattr(data, name).targets.numpy(), data.labels
            )
    metrics["history"] = result.history
    # calibration measures this CPU; a GPU plan would need that GPU's rates, DDP a model of the all-reduce
    if device.type == "cpu" and distributed.world_size() == 1:
        metrics["plan"] = plan_vs_measured(
            model,
            _typical_example(data.train),
            len(data.train),
            len(data.val) if data.val is not None else 0,
            len(result.history),
            sum(r["seconds"] for r in result.history),
            math.ceil(len(data.train) / cfg.train.batch_size),
        )
    spec = {
        "task": cfg.task,
        "model": {"name": cfg.model.name, "options": options},
        "input_shape": list(data.input_shape),
        "labels": data.labels,
        "preprocessing": data.preprocessing,
        "label_column": cfg.data.label,
        "run_id": path.name,
        "created": datetime.now().isoformat(timespec="seconds"),
        "config_dir": str(base_dir.resolve()),  # where the config's relative data paths start (retrain)
        "test_accuracy": metrics.get("test", {}).get("accuracy"),
    }
    if cfg.train.distill:
        spec["variant"] = {
            "kind": "distilled",
            "of_run": json.loads(
                (
                    package_folder(text.resolve_path(cfg.train.distill.teacher, base_dir)) / "model.json"
                ).read_text()
            ).get("run_id"),
            "temperature": cfg.train.distill.temperature,
            "alpha": cfg.train.distill.alpha,
        }
    save_package(path / "model", model, spec, {**data.files, **getattr(model, "package_files", dict)()})
    save_sample(path, HELDOUT, data.test if data.test is not None else data.val)
    save_sample(path, CALIBRATION, data.train)
    atomic_write_json(path / "metrics.json", metrics)
    timings["evaluate"] = time.perf_counter() - clock
    write_run_report(
        path, cfg.name or path.name, metrics, data, probabilities.get("test"), config_to_dict(cfg)
    )
    return metrics, timings


def _teacher(
    cfg: Config, base_dir: Path, data: Prepared, device: torch.device, console: Console
) -> torch.nn.Module:
    """The distillation teacher, checked to read the same inputs and name the same labels as the student."""
    from modelfoundry.predictor import load

    where = text.resolve_path(cfg.train.distill.teacher, base_dir)
    teacher = load(where, device=str(device), backend="torch")
    pre, mine = teacher.spec["preprocessing"], data.preprocessing
    problems = []
    if teacher.labels != data.labels:
        problems.append(f"its labels {teacher.labels} are not this data's {data.labels}")
    if pre["kind"] != mine["kind"]:
        problems.append(f"it takes {pre['kind']} inputs, this data is {mine['kind']}")
    elif (
        pre["kind"] == "text"
        and (teacher.path / "tokenizer.json").read_text() != data.files["tokenizer.json"]
    ):
        problems.append("it uses another tokenizer; set data.tokenizer to the teacher's model/tokenizer.json")
    elif pre["kind"] != "text" and pre != mine:
        problems.append(
            "its preprocessing (image size and channels, or table columns) differs from this data's"
        )
    if problems:
        raise UserError(f"train.distill.teacher: {where} cannot teach this model: {'; '.join(problems)}.")
    for parameter in teacher.model.parameters():
        parameter.requires_grad_(False)
    console.print(
        f"distilling from {teacher.spec['model']['name']} ({sum(p.numel() for p in teacher.model.parameters()):,} "
        f"parameters), temperature {cfg.train.distill.temperature}, alpha {cfg.train.distill.alpha}",
        highlight=False,
    )
    return teacher.model.eval()


def mistakes_for_report(
    probabilities: np.ndarray | None, targets: np.ndarray, labels: list[str], display: list
) -> list[dict]:
    if probabilities is None:
        return []
    out = []
    worst = list(worst_mistakes(probabilities, targets))
    # streamed tables read only the rows shown from their file, in one pass
    rows = display.take(worst) if hasattr(display, "take") else [display[i] for i in worst]
    for i, shown in zip(worst, rows):
        item = {
            "true": labels[targets[i]],
            "pred": labels[int(probabilities[i].argmax())],
            "confidence": float(probabilities[i].max()),
        }
        item["row" if isinstance(shown, dict) else "text" if isinstance(shown, str) else "image"] = shown
        out.append(item)
    return out


def write_run_report(
    path: Path, title: str, metrics: dict, data: Prepared, test_probabilities, config: dict
) -> Path:
    from modelfoundry.evaluate.report import write_report

    test_targets = data.test.targets.numpy() if data.test is not None else np.zeros(0, int)
    mistakes = mistakes_for_report(test_probabilities, test_targets, data.labels, data.test_display)
    return write_report(
        path / "report.html",
        title=title,
        metrics={k: metrics[k] for k in ("val", "test") if k in metrics},
        history=metrics.get("history", []),
        data_report=data.report,
        labels=data.labels,
        mistakes=mistakes,
        config=config,
    )


def evaluate(run: str | Path, data_path: str | Path, console: Console | None = None) -> tuple[dict, Path]:
    """Evaluate a packaged model on new labelled data; writes metrics.json and report.html under
    `<run>/evaluations/<data name>-<time>/`. Returns the metrics of that data (under 'test') and the folder."""
    from modelfoundry.data import tabular
    from modelfoundry.data.validate import class_balance
    from modelfoundry.predictor import load

    predictor = load(run)
    spec, source = predictor.spec, Path(data_path)
    if not source.exists():
        raise UserError(f"--data: {source} not found.")
    if spec["preprocessing"]["kind"] == "image":
        pre = spec["preprocessing"]
        if not source.is_dir():
            raise UserError(
                f"--data: {source} must be a folder with one sub-folder per class for an image model."
            )
        examples, labels, _, _ = images.read_image_folder(source, pre["size"], pre["channels"])
        probabilities = predictor.predict_proba(list(examples))
        display = list(examples)
    elif spec["preprocessing"]["kind"] == "text":
        pre = spec["preprocessing"]
        texts, labels = text.read_text_table(
            source, pre["text_column"], spec["label_column"], pre.get("quoting", True)
        )
        display = ["" if t is None else t for t in texts]
        probabilities = predictor.predict_proba(display)
    else:
        frame = tabular.read_table(source)
        tabular.check_column(frame, spec["label_column"], "label", str(source))
        labels = frame[spec["label_column"]].astype(str).to_numpy()
        probabilities = predictor.predict_proba(frame.drop(columns=[spec["label_column"]]))
        display = frame.to_dict(orient="records")
    unknown = sorted(set(labels) - set(predictor.labels))
    if unknown:
        raise UserError(
            f"--data: label(s) {', '.join(map(repr, unknown[:5]))} in {source} were never seen in training; "
            f"the model knows {', '.join(predictor.labels)}."
        )
    targets = np.array([predictor.labels.index(v) for v in labels])
    metrics = {"test": classification_metrics(probabilities, targets, predictor.labels), "data": str(source)}
    folder = run_folder(package_folder(run)) / "evaluations" / f"{source.stem}-{datetime.now():%Y%m%d-%H%M%S}"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "metrics.json", metrics)
    from modelfoundry.evaluate.report import write_report

    counts, warnings = class_balance(labels, predictor.labels)
    write_report(
        folder / "report.html",
        title=f"{spec.get('run_id', 'model')} on {source.name}",
        metrics={"test": metrics["test"]},
        history=[],
        data_report={
            "source": str(source),
            "n_examples": len(labels),
            "class_counts": counts,
            "warnings": warnings,
        },
        labels=predictor.labels,
        mistakes=mistakes_for_report(probabilities, targets, predictor.labels, display),
        config={"run": str(run), "data": str(source)},
    )
    return metrics, folder
