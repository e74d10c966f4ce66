"""Commented starter configs written by `foundry init`: each task module keeps its own (`Task.starter`)."""

from __future__ import annotations

from modelfoundry.config import TASKS
from modelfoundry.errors import UserError, did_you_mean


def starter_config(task: str) -> str:
    if task not in TASKS:
        raise UserError(
            f"--task: '{task}' is not a task.{did_you_mean(task, TASKS)} Tasks: {', '.join(TASKS)}."
        )
    from modelfoundry.tasks import get_task

    return get_task(task).starter
