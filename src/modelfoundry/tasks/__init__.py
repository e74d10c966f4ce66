"""Tasks: what the user asks the model to do. Each task is one module behind this registry.

A task decides the data it reads, how inputs are encoded (for training, `Predictor` and the HTTP
service alike), the targets and loss, the metrics, the report's sections, the served answer and
the feedback it takes. The runner, CLI, server, retraining, compression and tuning ask the task
(`get_task(config.task)` or `task_of(spec)`) instead of branching on its name.

Adding a task = one module with a `Task` subclass + one line in `TASKS` + its tests.
"""

from __future__ import annotations

import importlib
from functools import cache

from modelfoundry.errors import UserError, did_you_mean

# task name -> "module:class"; modules are imported on first use, so `foundry --help` stays fast
TASKS = {
    "image_classification": "modelfoundry.tasks.image:ImageClassification",
    "text_classification": "modelfoundry.tasks.text:TextClassification",
    "tabular_classification": "modelfoundry.tasks.tabular:TabularClassification",
    "tabular_regression": "modelfoundry.tasks.regression:TabularRegression",
    "text_generation": "modelfoundry.tasks.generation:TextGeneration",
}

# validation metrics that are best low; every other one is best high
MINIMIZED = frozenset({"val_loss", "val_rmse", "val_mae"})


@cache
def get_task(name: str):
    """The task object registered under `name` (one shared instance per task)."""
    if name not in TASKS:
        raise UserError(
            f"task: {name!r} is not a task here. Allowed: {', '.join(TASKS)}.{did_you_mean(name, TASKS)}"
        )
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


def task_of(spec: dict):
    """The task of a model package (its `model.json` as a dict)."""
    return get_task(spec["task"])
