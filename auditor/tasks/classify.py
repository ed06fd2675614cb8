"""Classifiers: predictions are class ids, references labels; the score is accuracy."""

from __future__ import annotations

import torch

from auditor.tasks.base import Task


class Classify(Task):
    name = "classify"
    metric = "accuracy"

    def predict(self, adapter, x: torch.Tensor) -> torch.Tensor:
        return adapter.predict(x).cpu()

    def score(self, pred, reference, adapter) -> float:
        return (pred == reference).double().mean().item()

    def agreement(self, pred, reference) -> torch.Tensor:
        return (pred == reference).double()

    # ---- augment ----------------------------------------------------------------------------------------

    def imagenet_classes(self, num_classes: int) -> bool:
        return num_classes == 1000

    # ---- attacks ----------------------------------------------------------------------------------------

    attack_stops_when_wrong = True
    attack_min_eps_images = 64
    attack_bisect_rounds = 4
    attack_check_images = 32
    attack_check_restarts = 2
    attack_square = True
    attack_per_class = True
    attack_gallery_at_flip = True
    attack_gallery = "classes"
