"""The Task contract: everything that differs between classifiers, detectors and segmenters.

Probes are written once for all tasks: they ask the task (``ctx.task``, or ``task_of(adapter)``)
to predict a batch, join and slice predictions, turn them into a reference, score them, warp
labels under a geometric shift, choose what to explain, and word a finding. A probe never
compares task names; a new task is a new subclass here.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch


class Task(abc.ABC):
    name: ClassVar[str]  # classify | detect | segment, as results.json and the adapters spell it
    metric: ClassVar[str]  # the task's clean score: accuracy | map50 | miou

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # ---- predictions and references -------------------------------------------------------------------

    @abc.abstractmethod
    def predict(self, adapter, x: torch.Tensor) -> Any:
        """The decoded prediction of a pixel-space batch, on the CPU."""

    def concat(self, parts: list) -> Any:
        return torch.cat(parts)

    def take(self, items, index):
        """Items at a slice, or at a list (or tensor) of indices."""
        return items[index] if isinstance(index, slice) else items[torch.as_tensor(index, dtype=torch.long)]

    def to(self, items, device):
        return items.to(device)

    def reference(self, data, clean_pred):
        """What predictions are scored against: the labels, or (label-free) the clean prediction."""
        return data.labels.long() if data.labelled else self.as_reference(clean_pred)

    def as_reference(self, clean_pred):
        """The clean prediction in the form of a reference (label-free audits, flip rates)."""
        return clean_pred.clone()

    def warp(self, items, affine, size):
        """References moved with a geometric shift (affine: B x 3 x 3, output -> input pixel)."""
        return items

    # ---- scores -----------------------------------------------------------------------------------------

    @abc.abstractmethod
    def score(self, pred, reference, adapter) -> float:
        """The task's metric over a whole set of predictions."""

    @abc.abstractmethod
    def agreement(self, pred, reference) -> torch.Tensor:
        """Per image, how much of its reference the prediction still matches, in [0, 1]."""

    def image_score(self, pred, reference, num_classes: int) -> torch.Tensor:
        """Each image's own score against its reference, in [0, 1]: what "this image broke" is judged on."""
        return self.agreement(pred, reference)

    # ---- augment ----------------------------------------------------------------------------------------

    def has_objects(self, reference) -> torch.Tensor:
        """Per image (float64), 1 where its reference holds something a figure can show, else 0: the augment
        probe draws its shift examples on such an image. A label or a mask is always there."""
        return torch.ones(len(reference), dtype=torch.float64)

    def imagenet_classes(self, num_classes: int) -> bool:
        """Whether the model names one of ImageNet's 1000 classes per image, the setting of published ImageNet
        figures: the augment probe then takes AlexNet's ImageNet-C errors as its default mCE reference."""
        return False

    # ---- attacks ----------------------------------------------------------------------------------------

    # Whether an image is right or wrong as a whole (one class): then it leaves the PGD batch at its first
    # misclassified iterate (AutoAttack's rule) and the check runs restarts cheaply. Otherwise every image
    # takes every step and keeps its highest-loss iterate.
    attack_stops_when_wrong: ClassVar[bool] = False
    # Sizes used when attacks.min_eps_images / attacks.bisect / attacks.check_images are unset: images
    # whose minimal ε is bisected, bisection rounds, images for the stronger-PGD and ε = 1 checks. A
    # detector's or segmenter's attack step costs 10-100 times a classifier's.
    attack_min_eps_images: ClassVar[int] = 8
    attack_bisect_rounds: ClassVar[int] = 2
    attack_check_images: ClassVar[int] = 8
    attack_check_restarts: ClassVar[int] = 0  # restarts the stronger-PGD check adds to attacks.restarts
    attack_square: ClassVar[bool] = False  # ART's gradient-free Square attack (it needs a classifier) checks PGD
    attack_per_class: ClassVar[bool] = False  # accuracy per true class and the confusion under attack
    attack_disappearance: ClassVar[bool] = False  # the share of objects found clean that PGD makes disappear
    # The gallery: True shows each image at the smallest budget that flips it; False the images that lose
    # most at the budget that halves the metric.
    attack_gallery_at_flip: ClassVar[bool] = False
    attack_gallery: ClassVar[str] = "classes"  # how the gallery draws an output: classes | boxes | masks


@torch.no_grad()
def predict_all(adapter, data, task: Task, batch_size: int, device) -> Any:
    """The model's clean predictions on the whole set, batch by batch, joined."""
    return task.concat([task.predict(adapter, x) for x, _ in data.batches(batch_size, device)])
