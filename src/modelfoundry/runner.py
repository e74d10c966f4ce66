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
from pathlib import Path

import numpy as np
import torch
import yaml
from rich.console import Console

from modelfoundry.builder import build, model_options
from modelfoundry.config import Config, config_to_dict, load_config
from modelfoundry.data.prepare import Prepared, prepare
from modelfoundry.errors import UserError
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
from modelfoundry.tasks import get_task, task_of
from modelfoundry.tasks.tabular import BUILTIN_LABEL
from modelfoundry.training import distributed
from modelfoundry.training.features import cached_features
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
    """Train, evaluate and package a model, registered as a new model version; returns the run with its
    metrics.

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
        distributed.finish()  # waits for rank 0 to write the run
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
        for k in get_task(cfg.task).headline
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
    distributed.finish()
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
    task = get_task(cfg.task)
    timings = {}
    clock = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    data = prepare(cfg, base_dir)
    if path:
        atomic_write_json(path / "data_report.json", data.report)
    timings["data"] = time.perf_counter() - clock
    shape = data.input_shape
    console.print(
        f"data: {data.report['splits']} examples (train/val/test), {task.describe_targets(data.labels)}, "
        + (f"up to {shape[0]} tokens per text" if "max_length" in data.preprocessing else f"input {shape}"),
        highlight=False,
    )
    built = build(cfg, base_dir, data, device, console)
    model = built.model
    from_recipe = {k: v for k, v in cfg.recipe.items() if v.endswith(" recipe")}
    if from_recipe:
        values = ", ".join(f"{k.removeprefix('train.')}={_shown(cfg, k)}" for k in from_recipe)
        console.print(
            f"recipe: {cfg.model.name} defaults for keys the config leaves unset: {values}", highlight=False
        )
    for choice in built.choices:
        console.print(f"chosen: {choice}", highlight=False)
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
    trained, fitted, augment, train_cfg = model, splits, built.augment, built.train
    if train_cfg.features_only:  # a linear probe: the frozen backbone's features, computed once
        trained, fitted = cached_features(model.to(device), {k: splits[k] for k in ("train", "val")})
        augment, train_cfg = None, train_cfg.model_copy(update={"freeze_epochs": 0, "lr_backbone": None})
        console.print(
            f"features: {fitted['train'].inputs.shape[1]} per example computed once in "
            f"{time.perf_counter() - clock:.1f}s; training the head on them (no augmentation)",
            highlight=False,
        )
    result = fit(
        trained,
        fitted["train"],
        fitted["val"],
        train_cfg,
        device=device,
        checkpoint_dir=path and path / "checkpoints",
        resume=resume,
        log_dir=path and path / "tensorboard",
        augment=augment,
        console=console,
        teacher=built.teacher,
        objective=built.objective,
    )
    timings["train"] = result.earlier_seconds + time.perf_counter() - clock  # every process of a resumed run
    if path is None:
        return {}, timings

    clock = time.perf_counter()
    metrics: dict = {
        "recipe": {"from": cfg.recipe, "chosen": built.choices},
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "precision": result.precision,
    }
    if setup:
        metrics["distributed"] = setup
    spec = {
        "task": cfg.task,
        "model": {
            "name": cfg.model.name,
            "options": {**model_options(cfg, base_dir), **getattr(model, "resolved_options", {})},
        },
        "input_shape": list(data.input_shape),
        "labels": data.labels,
        "preprocessing": data.preprocessing,
        "label_column": cfg.data.label or (BUILTIN_LABEL if cfg.data.source.startswith("builtin:") else None),
        "run_id": path.name,
        "created": datetime.now().isoformat(timespec="seconds"),
        "config_dir": str(base_dir.resolve()),  # where the config's relative data paths start (retrain)
    }
    if data.target:
        spec["target"] = data.target
    predictions = {}
    for name in ("val", "test"):
        if splits[name] is not None:
            predictions[name] = task.predictions(predict_logits(model, splits[name]), spec)
            metrics[name] = task.metrics(predictions[name], getattr(data, name).targets.numpy(), spec)
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
            math.ceil(len(data.train) / built.train.batch_size),
        )
    spec["test_accuracy"] = metrics.get("test", {}).get("accuracy")
    if cfg.train.distill:
        from modelfoundry.data import text

        teacher = package_folder(text.resolve_path(cfg.train.distill.teacher, base_dir))
        spec["variant"] = {
            "kind": "distilled",
            "of_run": json.loads((teacher / "model.json").read_text()).get("run_id"),
            "temperature": cfg.train.distill.temperature,
            "alpha": cfg.train.distill.alpha,
        }
    save_package(path / "model", model, spec, {**data.files, **getattr(model, "package_files", dict)()})
    save_sample(path, HELDOUT, data.test if data.test is not None else data.val)
    save_sample(path, CALIBRATION, data.train)
    atomic_write_json(path / "metrics.json", metrics)
    timings["evaluate"] = time.perf_counter() - clock
    test = data.test.targets.numpy() if data.test is not None else None
    write_run_report(
        path, cfg.name or path.name, metrics, data, spec, predictions.get("test"), test, config_to_dict(cfg)
    )
    return metrics, timings


def _shown(cfg: Config, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def write_run_report(
    path: Path, title: str, metrics: dict, data: Prepared, spec: dict, predictions, targets, config: dict
) -> Path:
    """report.html of a run: the task's metrics, sections and worst mistakes of the test split."""
    from modelfoundry.evaluate.report import write_report

    task = task_of(spec)
    return write_report(
        path / "report.html",
        title=title,
        metrics={k: metrics[k] for k in ("val", "test") if k in metrics},
        history=metrics.get("history", []),
        data_report=data.report,
        labels=data.labels,
        mistakes=task.mistakes(predictions, targets, spec, data.test_display),
        config=config,
        sections=task.report_sections(predictions, targets, spec),
    )


def evaluate(
    run: str | Path, data_path: str | Path, console: Console | None = None, label: str | None = None
) -> tuple[dict, Path]:
    """Evaluate a packaged model on new labelled data; writes metrics.json and report.html under
    `<run>/evaluations/<data name>-<time>/`. Returns the metrics of that data (under 'test') and the folder.

    `label`: the label column of the data when it is not named as in training."""
    from modelfoundry.evaluate.report import write_report
    from modelfoundry.predictor import load

    predictor = load(run)
    spec, source, task = predictor.spec, Path(data_path), predictor.task_module
    if not source.exists():
        raise UserError(f"--data: {source} not found.")
    inputs, raw, display = task.read_labelled(predictor, source, label)
    targets = task.encode_targets(raw, spec, f"--data: {source}")
    predictions = predictor.predictions(inputs)
    metrics = {"test": task.metrics(predictions, targets, spec), "data": str(source)}
    folder = run_folder(package_folder(run)) / "evaluations" / f"{source.stem}-{datetime.now():%Y%m%d-%H%M%S}"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "metrics.json", metrics)
    data_report = {"source": str(source), "n_examples": len(raw)}
    if task.is_classifier:
        from modelfoundry.data.validate import class_balance

        data_report["class_counts"], data_report["warnings"] = class_balance(raw, predictor.labels)
    write_report(
        folder / "report.html",
        title=f"{spec.get('run_id', 'model')} on {source.name}",
        metrics={"test": metrics["test"]},
        history=[],
        data_report=data_report,
        labels=predictor.labels,
        mistakes=task.mistakes(predictions, targets, spec, display),
        config={"run": str(run), "data": str(source)},
        sections=task.report_sections(predictions, targets, spec),
    )
    return metrics, folder
