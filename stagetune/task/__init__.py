"""The Task seam (classification, regression): see `stagetune.task.base`."""

from stagetune.task.base import Task
from stagetune.task.registry import full_task_for, task_for

__all__ = ["Task", "full_task_for", "task_for"]
