"""One builder from a config and its prepared data to what training needs: the model, the training
augmentation, the distillation teacher and the task's loss. The runner, `foundry tune` and
`foundry compress` all build through here, so a trial or a variant trains what a run trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from modelfoundry.errors import UserError
from modelfoundry.models.registry import build_model, family_function, family_of
from modelfoundry.tasks import get_task, task_of

MAX_EPOCHS = 100  # the most epochs foundry chooses from the data size (Family.steps; the fewest: min_epochs)


@dataclass
class Built:
    model: torch.nn.Module
    augment: object  # callable (batch, generator) -> batch, or None
    teacher: torch.nn.Module | None
    objective: object  # tasks.base.Objective
    train: object  # config.TrainConfig with the choices made at run time (epochs, monitor)
    choices: list[str]  # those choices, in words
    fit: object  # the function that trains it: training.loop.fit, or the family's own (Family.trains)


def run_time_choices(cfg, data) -> tuple[object, list[str]]:
    """What the config left to the data: the epochs (from the training set's size, within a time
    budget, stopping early) and the monitored metric (the loss when the validation set is small)."""
    from modelfoundry.config import AUTO_EPOCH_MINUTES, SMALL_VAL

    train, updates, choices = cfg.train, {}, []
    family = family_of(cfg.model.name)
    if family.trains:  # no epochs, no monitor: the family's own training decides
        return train, choices
    val = len(data.val) if data.val is not None else 0
    smooth = get_task(cfg.task).small_val_monitor
    if not cfg.user_set("train.monitor") and 0 < val < SMALL_VAL and train.monitor != smooth:
        updates["monitor"] = smooth
        choices.append(
            f"monitor {smooth}: {val} validation examples are fewer than {SMALL_VAL}, where {train.monitor} "
            "moves in steps and picks lucky epochs"
        )
    if cfg.recipe.get("train.epochs", "").startswith("chosen"):
        steps = math.ceil(len(data.train) / train.batch_size)
        epochs = min(MAX_EPOCHS, max(family.min_epochs, math.ceil(family.steps / steps)))
        updates["epochs"] = epochs
        updates["max_minutes"] = train.max_minutes or AUTO_EPOCH_MINUTES
        line = (
            f"epochs {epochs}: about {family.steps:,} steps ({cfg.model.name}) of {steps} per epoch for "
            f"{len(data.train):,} training examples, at most {updates['max_minutes']:g} minutes"
        )
        if val and cfg.recipe.get("train.early_stopping_patience", "").startswith("chosen"):
            updates["early_stopping_patience"] = max(5, epochs // 10)
            patience = updates["early_stopping_patience"]
            line += f", stopping after {patience} epochs without a better validation score"
        choices.append(line)
    return train.model_copy(update=updates), choices


def model_options(cfg, base_dir: Path) -> dict:
    """The family's arguments from `model:`; a pretrained model's `path` relative to the config."""
    from modelfoundry.data import text

    options = dict(cfg.model.model_extra or {})
    if "path" in options:
        options["path"] = text.resolve_path(options["path"], base_dir)
    return options


def model_for(task, name: str, options: dict, input_shape, labels: list[str], preprocessing: dict):
    """A fresh model of family `name` sized for the task's inputs and outputs."""
    text_spec, table_spec = task.model_text_spec(preprocessing), task.model_table_spec(preprocessing)
    return build_model(name, tuple(input_shape), task.output_size(labels), text_spec, table_spec, **options)


def model_from_spec(spec: dict, **options) -> torch.nn.Module:
    """The (untrained) architecture a package describes; `options` override its saved ones."""
    return model_for(
        task_of(spec),
        spec["model"]["name"],
        {**spec["model"]["options"], **options},
        spec["input_shape"],
        spec["labels"],
        spec["preprocessing"],
    )


def build(cfg, base_dir: Path, data, device: torch.device, console: Console | None = None) -> Built:
    task = get_task(cfg.task)
    console = console or Console(quiet=True)
    model = model_for(
        task, cfg.model.name, model_options(cfg, base_dir), data.input_shape, data.labels, data.preprocessing
    )
    # a family that keeps some of the data in its weights (two_tower), or sizes itself by it (gbdt)
    if hasattr(model, "read_data"):
        model.read_data(data)
    choices = list(getattr(model, "choices", []))  # what the family chose from the data (image_size)
    if cfg.model.init_from:
        choices.append(warm_start(model, cfg, base_dir, data.labels))
    teacher = _teacher(cfg, base_dir, data, device, console) if cfg.train.distill else None
    train, more = run_time_choices(cfg, data)
    objective = task.objective(train, data.target)
    return Built(
        model, task.augmentation(cfg), teacher, objective, train, choices + more, trainer(cfg.model.name)
    )


def trainer(name: str):
    """What trains a model of family `name`: the gradient loop, or the family's own (gbdt: boosting)."""
    family = family_of(name)
    if family.trains:
        return family_function(name, family.trains)
    from modelfoundry.training.loop import fit

    return fit


def warm_start(model: torch.nn.Module, cfg, base_dir: Path, labels: list[str]) -> str:
    """`model.init_from`: copy an earlier run's weights into `model` (same task and family). When the
    labels changed, the output layer (the model's `head`, else its last Linear) starts fresh.
    Returns what was done, in words."""
    import json

    from safetensors.torch import load_file

    from modelfoundry.data import text
    from modelfoundry.runfiles import package_folder

    where = text.resolve_path(cfg.model.init_from, base_dir)
    folder = package_folder(where)
    spec = json.loads((folder / "model.json").read_text())
    theirs = (spec["task"], spec["model"]["name"])
    if theirs != (cfg.task, cfg.model.name):
        raise UserError(
            f"model.init_from: {where} holds a '{theirs[1]}' model for {theirs[0]}; this config trains a "
            f"'{cfg.model.name}' for {cfg.task}. Start from a run of the same task and model family, or "
            "remove init_from."
        )
    if not (folder / "model.safetensors").is_file():
        raise UserError(f"model.init_from: {folder} has no model.safetensors (an ONNX-only variant).")
    state, ours = load_file(str(folder / "model.safetensors")), model.state_dict()
    new_head = ""
    if spec["labels"] != labels:
        head = getattr(model, "head", None)
        linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        new_head = next((n for n, m in model.named_modules() if m is head), None) or linears[-1]
        state = {k: v for k, v in state.items() if not k.startswith(f"{new_head}.")}
    wrong = [k for k, v in state.items() if k not in ours or ours[k].shape != v.shape]
    missing = sorted(set(ours) - set(state) - {k for k in ours if new_head and k.startswith(f"{new_head}.")})
    if wrong or missing:
        raise UserError(
            f"model.init_from: {where} has another architecture (e.g. {(wrong or missing)[0]}); give "
            f"model: the options of that run ({spec['model']['options']}) or remove init_from."
        )
    model.load_state_dict(state, strict=not new_head)
    line = f"init_from {spec.get('run_id', where)}: {len(state)} tensors of its weights"
    if new_head:
        return line + (
            f"; its labels {spec['labels']} are not this data's {labels}: a new head `{new_head}` "
            f"({ours[f'{new_head}.weight'].shape[0]} outputs) starts fresh"
        )
    return line


def _teacher(cfg, base_dir: Path, data, device: torch.device, console: Console) -> torch.nn.Module:
    """The distillation teacher, checked to read the same inputs and name the same labels as the student."""
    from modelfoundry.data import text
    from modelfoundry.predictor import load

    where = text.resolve_path(cfg.train.distill.teacher, base_dir)
    teacher = load(where, device=str(device), backend="torch")
    pre, mine = teacher.spec["preprocessing"], data.preprocessing
    problems = []
    if teacher.task != cfg.task:
        problems.append(f"it is a {teacher.task} model, this config's task is {cfg.task}")
    if teacher.labels != data.labels:
        problems.append(f"its labels {teacher.labels} are not this data's {data.labels}")
    if pre["kind"] != mine["kind"]:
        problems.append(f"it takes {pre['kind']} inputs, this data is {mine['kind']}")
    elif "tokenizer.json" in data.files:
        if (teacher.path / "tokenizer.json").read_text() != data.files["tokenizer.json"]:
            problems.append(
                "it uses another tokenizer; set data.tokenizer to the teacher's model/tokenizer.json"
            )
    elif pre != mine:
        problems.append(
            "its preprocessing (image size and channels, or table columns) differs from this data's"
        )
    if problems:
        raise UserError(f"train.distill.teacher: {where} cannot teach this model: {'; '.join(problems)}.")
    for parameter in teacher.model.parameters():
        parameter.requires_grad_(False)
    console.print(
        f"distilling from {teacher.spec['model']['name']} "
        f"({sum(p.numel() for p in teacher.model.parameters()):,} parameters), "
        f"temperature {cfg.train.distill.temperature}, alpha {cfg.train.distill.alpha}",
        highlight=False,
    )
    return teacher.model.eval()
