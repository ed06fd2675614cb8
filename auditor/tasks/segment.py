"""Segmenters: predictions and references are N x H x W class-id masks (255 = ignore); the score is mIoU."""

from __future__ import annotations

import torch

from auditor.metrics import mean_iou_score
from auditor.tasks.classify import Classify
from auditor.tasks.warp import warp_masks


class Segment(Classify):
    name = "segment"
    metric = "miou"

    def warp(self, items, affine, size):
        return warp_masks(items, affine)

    def score(self, pred, reference, adapter) -> float:
        return mean_iou_score(pred, reference, adapter.num_classes)

    def agreement(self, pred, reference) -> torch.Tensor:
        valid = reference != 255
        return ((pred == reference) & valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)

    def image_score(self, pred, reference, num_classes: int) -> torch.Tensor:
        """Per-image mean IoU over the classes in its reference or prediction (pixel accuracy would hide
        a lost object behind the background's many pixels)."""
        valid = (reference != 255).flatten(1)
        p, r = pred.flatten(1), reference.flatten(1)
        ious = []
        for c in range(num_classes):
            inter = ((p == c) & (r == c) & valid).sum(1)
            union = (((p == c) | (r == c)) & valid).sum(1)
            ious.append(
                torch.where(
                    union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan"), dtype=torch.float64)
                )
            )
        return torch.stack(ious, 1).double().nanmean(1).nan_to_num(1.0)

    # ---- augment ----------------------------------------------------------------------------------------

    def imagenet_classes(self, num_classes: int) -> bool:
        return False  # a class per pixel, not per image (Classify's answer does not carry over)

    # ---- attacks ----------------------------------------------------------------------------------------
    # A mask is not right or wrong as a whole, and an attack step costs as much as a detector's
    # (so the sizes are the detector's, Task's defaults, not the classifier's that this class inherits)
    attack_stops_when_wrong = False
    attack_min_eps_images = 8
    attack_bisect_rounds = 2
    attack_check_images = 8
    attack_check_restarts = 0
    attack_square = False
    attack_per_class = False
    attack_gallery_at_flip = False
    attack_gallery = "masks"
