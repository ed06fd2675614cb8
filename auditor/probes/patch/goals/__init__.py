"""What a patch should do, one Goal per task (base.py has the contract); `goal_for` picks it, in one place."""

from __future__ import annotations

from auditor.probes.patch.goals.base import Examples, Goal, Scored, Scoring
from auditor.probes.patch.goals.classify import ClassifyGoal
from auditor.probes.patch.goals.detect import DetectGoal
from auditor.probes.patch.goals.segment import SegmentGoal
from auditor.tasks import Task

GOALS: dict[str, type[Goal]] = {"classify": ClassifyGoal, "detect": DetectGoal, "segment": SegmentGoal}


def goal_for(task: Task) -> type[Goal]:
    """The Goal class of a task."""
    return GOALS[task.name]


__all__ = ["GOALS", "ClassifyGoal", "DetectGoal", "Examples", "Goal", "Scored", "Scoring", "SegmentGoal", "goal_for"]
