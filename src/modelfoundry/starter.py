"""Commented starter configs written by `foundry init`: the task's data and model sections (`Task.starter`),
then the training keys of the model family's recipe, commented, so users see what they get."""

from __future__ import annotations

import yaml

from modelfoundry.config import TASKS
from modelfoundry.errors import UserError, did_you_mean


def starter_config(task: str) -> str:
    if task not in TASKS:
        raise UserError(
            f"--task: '{task}' is not a task.{did_you_mean(task, TASKS)} Tasks: {', '.join(TASKS)}."
        )
    from modelfoundry.tasks import get_task

    text = get_task(task).starter
    family = (yaml.safe_load(text).get("model") or {}).get("name", "mlp")
    return text + train_section(family, "train:" not in text)


def train_section(family: str, header: bool = True) -> str:
    """The recipe of `family` as commented train keys, and what foundry chooses at run time."""
    from modelfoundry.models.registry import family_of

    recipe, steps, fewest = family_of(family).recipe, family_of(family).steps, family_of(family).min_epochs
    lines = ["train:"] if header else []
    lines += [
        "  seed: 0",
        f"  # Left unset, these come from the {family} recipe (models/registry.py, measured in",
        "  # bench/RESULTS.md). Uncomment a line to choose the value yourself:",
    ]
    lines += [
        f"  # {key.removeprefix('train.')}: {value}"
        for key, value in recipe.items()
        if key.startswith("train.")
    ]
    if "train.epochs" not in recipe:
        lines += [
            f"  # epochs: 30              # default: chosen from the data size (about {steps:,} steps,",
            f"  #                         # {fewest} to 100 epochs), at most max_minutes: 5, stopping early",
            "  #                         # when the validation score stops improving",
        ]
    lines += [
        "  # monitor: val_loss       # default: the task's metric, or val_loss below 200 validation examples",
        "  # precision: auto         # auto | fp32 | bf16 | fp16 (half precision only where it is faster)",
    ]
    augment = {k.removeprefix("data.augment."): v for k, v in recipe.items() if k.startswith("data.augment.")}
    if augment:
        lines.append(
            f"  # (the recipe also sets data.augment: {augment}, where the data section leaves it unset)"
        )
    return "\n".join(lines) + "\n"
