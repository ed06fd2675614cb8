"""One Task object per task: see base.py for the contract."""

from __future__ import annotations

from auditor.models.base import INSTANCE_MASKS
from auditor.tasks.base import Task, predict_all
from auditor.tasks.classify import Classify
from auditor.tasks.detect import Detect
from auditor.tasks.instances import InstanceDetect, Instances
from auditor.tasks.segment import Segment

TASKS: dict[str, Task] = {t.name: t for t in (Classify(), Detect(), Segment())}
INSTANCE_DETECT = InstanceDetect()  # a detector whose boxes have instance masks (ultralytics -seg)


def task_of(adapter_or_name) -> Task:
    """The Task of an adapter (by its ``task`` name, and its capabilities) or of a task name."""
    if isinstance(adapter_or_name, str):
        return TASKS[adapter_or_name]
    if INSTANCE_MASKS in getattr(adapter_or_name, "capabilities", ()):
        return INSTANCE_DETECT
    return TASKS[adapter_or_name.task]


__all__ = [
    "INSTANCE_DETECT",
    "TASKS",
    "Classify",
    "Detect",
    "InstanceDetect",
    "Instances",
    "Segment",
    "Task",
    "predict_all",
    "task_of",
]
