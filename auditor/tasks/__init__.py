"""One Task object per task: see base.py for the contract."""

from __future__ import annotations

from auditor.tasks.base import Task, predict_all
from auditor.tasks.classify import Classify
from auditor.tasks.detect import Detect
from auditor.tasks.segment import Segment

TASKS: dict[str, Task] = {t.name: t for t in (Classify(), Detect(), Segment())}


def task_of(adapter_or_name) -> Task:
    """The Task of an adapter (by its ``task`` name) or of a task name."""
    name = adapter_or_name if isinstance(adapter_or_name, str) else adapter_or_name.task
    return TASKS[name]


__all__ = ["TASKS", "Classify", "Detect", "Segment", "Task", "predict_all", "task_of"]
