"""The compressed variants a user asks `foundry compress` for: a distilled student, a structurally
pruned and fine-tuned copy (int8 is in quantize.py), each a run of its own beside the original.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import yaml
from rich.console import Console

from modelfoundry.compress.variants import parent_run_of, register_variant, variant_folder
from modelfoundry.config import absolute_paths, apply_overrides
from modelfoundry.errors import UserError
from modelfoundry.runfiles import METRICS, atomic_write_json
from modelfoundry.tasks import task_of


def original_config(parent: Path) -> tuple[dict, Path]:
    """The run's resolved config with absolute paths, and the folder its relative paths started from."""
    spec = json.loads((parent / "model" / "model.json").read_text())
    base_dir = Path(spec.get("config_dir", "."))
    if not (parent / "config.yaml").is_file():
        raise UserError(
            f"{parent}: no config.yaml, so the training data is unknown; compress a run folder, not a "
            "bare model package."
        )
    return absolute_paths(yaml.safe_load((parent / "config.yaml").read_text()), base_dir), base_dir


def distill(
    run: str | Path,
    student: list[str],
    epochs: int | None = None,
    temperature: float = 4.0,
    alpha: float = 0.7,
    console: Console | None = None,
    overrides: list[str] | None = None,
):
    """Train `student` (overrides such as model.name=cnn model.width=16) on the run's data and its soft
    labels.

    `overrides` (train.lr=0.002 ...) change the student's training: it starts from the teacher's
    settings, which for a fine-tuned teacher (a small lr) rarely suit a model trained from scratch."""
    from modelfoundry.runner import train
    from modelfoundry.store.models import ModelStore

    parent = parent_run_of(run)
    config, _ = original_config(parent)
    model = apply_overrides({}, [s.removeprefix("model.") for s in student if s.startswith("model.")])
    others = [s for s in student if not s.startswith("model.")]
    if "name" not in model:
        raise UserError(
            "--student: name the student's family, e.g. --student model.name=cnn model.width=16 "
            f"(the teacher is {config['model'].get('name')})."
        )
    if others:
        raise UserError(
            f"--student takes model.* keys only; got {', '.join(others)}. Use --epochs for training length."
        )
    config["model"] = model
    for key in ("lr_head", "lr_backbone", "freeze_epochs", "features_only", "refit"):
        config["train"].pop(
            key, None
        )  # the teacher's transfer-learning settings (and refit) are not the student's
    config["train"]["distill"] = {
        "teacher": str(parent / "model"),
        "temperature": temperature,
        "alpha": alpha,
    }
    if epochs:
        config["train"]["epochs"] = epochs
    teacher_spec = json.loads((parent / "model" / "model.json").read_text())
    config["data"].update(task_of(teacher_spec).student_data(parent / "model", teacher_spec))
    config["name"] = f"{config.get('name') or parent.name}-student"[:200]
    try:
        parent_version = ModelStore().get(str(parent)).id
    except UserError:
        parent_version = None
    return train(
        config,
        overrides or [],
        run_dir=variant_folder(parent, "distilled"),
        console=console,
        parent_version=parent_version,
        variant="distilled",
    )


def prune_and_finetune(
    run: str | Path, ratio: float, finetune_epochs: int = 2, console: Console | None = None
) -> dict:
    """Remove `ratio` of the channels / neurons / heads of every prunable layer, fine-tune, package as a
    variant."""
    from modelfoundry.compress.prune import parameter_count, prune
    from modelfoundry.config import load_config
    from modelfoundry.data.prepare import prepare
    from modelfoundry.predictor import load, save_package
    from modelfoundry.training.loop import fit, predict_logits

    console = console or Console(stderr=True)
    if not 0 < ratio < 1:
        raise UserError(
            f"--prune {ratio}: the fraction of units to remove must be between 0 and 1 (exclusive), "
            "e.g. --prune 0.5."
        )
    parent = parent_run_of(run)
    predictor = load(parent)
    if predictor.backend != "torch":
        raise UserError(f"{parent} is an ONNX-only (int8) variant; prune the original run.")
    config, base_dir = original_config(parent)
    cfg, _ = load_config(config)
    spec = predictor.spec
    task = predictor.task_module
    text = task.model_text_spec(spec["preprocessing"])
    before = parameter_count(predictor.model)
    model, options = prune(
        predictor.model,
        spec["model"]["name"],
        dict(spec["model"]["options"]),
        ratio,
        input_shape=tuple(spec["input_shape"]),
        num_classes=task.output_size(spec["labels"]),
        text=text,
    )
    after = parameter_count(model)
    console.print(f"pruned {ratio:.0%} of the units: {before:,} -> {after:,} parameters", highlight=False)
    data = prepare(cfg, base_dir)
    started = time.perf_counter()
    if finetune_epochs:
        train_cfg = cfg.train.model_copy(
            update={"epochs": finetune_epochs, "early_stopping_patience": None, "distill": None}
        )
        fit(
            model,
            data.train,
            data.val,
            train_cfg,
            device=torch.device("cpu"),
            console=console,
            objective=task.objective(train_cfg, data.target),
        )
    metrics = {}
    if data.test is not None:
        predictions = task.predictions(predict_logits(model, data.test), spec)
        metrics = task.metrics(predictions, data.test.targets.numpy(), spec)
    folder = variant_folder(parent, f"pruned{round(ratio * 100)}")
    details = {
        "method": "structured L1",
        "ratio": ratio,
        "finetune_epochs": finetune_epochs,
        "parameters_before": before,
        "parameters_after": after,
        "finetune_seconds": round(time.perf_counter() - started, 1),
    }
    new_spec = {
        **{k: v for k, v in spec.items() if k not in ("onnx", "format")},
        "model": {"name": spec["model"]["name"], "options": options},
        "run_id": folder.name,
        "test_accuracy": metrics.get("accuracy"),
        "variant": {"kind": "pruned", "of_run": spec.get("run_id"), **details},
    }
    files = {
        p.relative_to(predictor.path).as_posix(): p.read_text()
        for p in predictor.path.rglob("*")
        if p.is_file() and p.suffix in (".json", ".txt") and p.name != "model.json"
    }
    save_package(folder / "model", model, new_spec, {**files, **getattr(model, "package_files", dict)()})
    atomic_write_json(folder / METRICS, {"test": metrics, "variant": new_spec["variant"]})
    version = register_variant(parent, folder, "pruned", metrics)
    return {
        "folder": folder,
        "version": version,
        **details,
        "test_accuracy": metrics.get("accuracy"),
        "test": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    }
