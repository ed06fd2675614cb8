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

from auditor.targets import Targets


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

    # Metrics scored beside `metric` where the reference allows them (an instance segmenter's mask_map50): the
    # attacks and augment probes report each under its own name beside the task's metric.
    side_metrics: ClassVar[tuple[str, ...]] = ()

    def scores(self, pred, reference, adapter) -> dict[str, float]:
        """The task's metric and each side metric the reference allows, over a whole set, by name."""
        return {self.metric: self.score(pred, reference, adapter)}

    def estimates(self, pred, reference, adapter) -> dict:
        """The metrics of `scores` as auditor.stats Estimates over the images (what their intervals and paired
        tests need), keyed alike; empty where the task has none."""
        return {}

    @abc.abstractmethod
    def agreement(self, pred, reference) -> torch.Tensor:
        """Per image, how much of its reference the prediction still matches, in [0, 1]."""

    def image_score(self, pred, reference, num_classes: int) -> torch.Tensor:
        """Each image's own score against its reference, in [0, 1]: what "this image broke" is judged on."""
        return self.agreement(pred, reference)

    # ---- what there is to measure (auditor/degenerate.py) --------------------------------------------------

    def nothing_to_measure(self, pred, reference, labelled: bool) -> str | None:
        """Why the reference holds nothing an attack, a shift or a patch could change (clean predictions `pred`
        against `reference`), in words for a finding; None when there is something."""
        return None

    def chance_level(self, pred, reference, labelled: bool) -> str | None:
        """Why the clean score is no better than guessing, in words for a finding; None when it is, or when the
        task has no such check."""
        return None

    def constant_predictions(self, adapter, data, batch_size: int, device) -> str | None:
        """Why the model's clean predictions on `data` are (nearly) constant, in words for a finding; None when
        they are not, or when the task has no such check."""
        return None

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

    # Whether an image is right or wrong as a whole (one class): then it leaves an attack at its first
    # misclassified iterate (AutoAttack's rule), APGD-T has classes to target and the grid is swept from the
    # largest ε down. Otherwise every image takes every step and keeps its highest-loss iterate.
    attack_stops_when_wrong: ClassVar[bool] = False
    attack_norms: ClassVar[tuple[str, ...]] = ("linf",)  # the threat models attacks.norm may name
    # The ensemble's budget when attacks.steps / square_queries / masked_queries are unset: APGD iterations, the
    # Square attack's queries per image, and its queries when a masking check fails (then it runs everywhere).
    # A detector's or segmenter's step costs 10-100 times a classifier's, and its Square query two forwards.
    attack_steps: ClassVar[int] = 20
    attack_queries: ClassVar[int] = 25
    attack_masked_queries: ClassVar[int] = 500
    # Sizes used when attacks.min_eps_images / attacks.bisect / attacks.check_images are unset: images
    # whose minimal ε is bisected, bisection rounds, images for the stronger-attack and unbounded checks.
    attack_min_eps_images: ClassVar[int] = 8
    attack_bisect_rounds: ClassVar[int] = 2
    attack_check_images: ClassVar[int] = 8
    attack_per_class: ClassVar[bool] = False  # accuracy per true class and the confusion under attack
    attack_disappearance: ClassVar[bool] = False  # the share of objects found clean that the attacks make disappear
    attack_loss_name: ClassVar[str] = "task loss"  # what APGD maximises, as the report names its member

    def attack_loss(self, adapter, x: torch.Tensor, reference) -> torch.Tensor:
        """Per image, the loss APGD maximises on pixel-space x against the reference (on x's device): the
        model's own training loss unless the task knows a stronger one."""
        return adapter.objective(x, reference)

    # The gallery: True shows each image at the smallest budget that flips it; False the images that lose
    # most at the budget that halves the metric.
    attack_gallery_at_flip: ClassVar[bool] = False
    attack_gallery: ClassVar[str] = "classes"  # how the gallery draws an output: classes | boxes | masks
    # ---- gradcam ----------------------------------------------------------------------------------------
    # What the gradcam probe explains for this task and the words its report uses. A row is one thing to
    # explain (auditor.targets.Targets): a class of an image, a detected box, a class's predicted mask.
    # The output is one vector of class logits per image (classifiers): gradcam adds CAM (the linear head's
    # weights) and a gallery column per predicted class, and actmax optimises one image per class.
    class_logits: ClassVar[bool] = False
    label_kind: ClassVar[str]  # what an image's label is: "class" (an id), "boxes" (K x 5), "mask" (H x W ids)
    explain_images: ClassVar[int]  # images gradcam samples when gradcam.images is 0
    explain_faithful_rows: ClassVar[int]  # rows scored by deletion / insertion when gradcam.faithful_rows is 0
    explain_row: ClassVar[str]  # what a row is, for the report
    explain_nothing: ClassVar[str]  # what no sampled image had, when there is nothing to explain
    explain_score: ClassVar[str]  # the score a row's map explains, as findings word it
    explain_gallery: ClassVar[str]  # the caption of gradcam's gallery; {method} stands for the map's name
    randomised_unit: ClassVar[str] = "layer"  # what the sanity check re-initialises at a time, as findings word it

    def randomised_group(self, layer: str) -> str:
        """The unit of cascading randomisation that a learned layer (a module name) belongs to: itself."""
        return layer

    def explain_unsupported(self, adapter) -> str | None:
        """Why gradcam cannot explain this model's rows (a capability the adapter lacks), or None."""
        return None

    @abc.abstractmethod
    def explain_targets(self, adapter, x: torch.Tensor, labels, cap: int, batch_size: int) -> Targets:
        """The rows gradcam explains on pixel-space images x (labels: theirs, or None), at most `cap`,
        spread over the images; the model sees x in batches of `batch_size`."""

    # ---- actmax -----------------------------------------------------------------------------------------
    # The model takes inputs smaller than its own size (detectors, segmenters are fully convolutional), so
    # actmax optimises on a smaller canvas; a classifier's head may need its input size.
    fully_convolutional: ClassVar[bool] = True


@torch.no_grad()
def predict_all(adapter, data, task: Task, batch_size: int, device) -> Any:
    """The model's clean predictions on the whole set, batch by batch, joined."""
    return task.concat([task.predict(adapter, x) for x, _ in data.batches(batch_size, device)])
