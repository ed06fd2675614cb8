"""Segmenters: predictions and references are N x H x W class-id masks (255 = ignore); the score is mIoU."""

from __future__ import annotations

import torch

from auditor.metrics import mean_iou_score
from auditor.targets import Targets, chunks, round_robin
from auditor.tasks.base import Task
from auditor.tasks.warp import warp_masks


class Segment(Task):
    name = "segment"
    metric = "miou"

    def predict(self, adapter, x: torch.Tensor) -> torch.Tensor:
        return adapter.predict(x).cpu()

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

    # ---- attacks ----------------------------------------------------------------------------------------
    # A mask is not right or wrong as a whole, and an attack step costs as much as a detector's: the
    # sizes and checks are Task's defaults.
    attack_gallery = "masks"
    # ---- gradcam ----------------------------------------------------------------------------------------
    label_kind = "mask"
    explain_images = 8
    explain_faithful_rows = 8
    explain_row = "one class predicted in an image (background left out)"
    explain_nothing = "classes"
    explain_score = "the class's mean probability over its mask"
    explain_gallery = "{method} per class present: the map of the class's logits over its predicted mask (outlined)"
    MIN_PIXELS = 16  # a class predicted on fewer pixels of an image is a speck, not an object to explain

    @torch.no_grad()
    def explain_targets(self, adapter, x: torch.Tensor, labels, cap: int, batch_size: int) -> Targets:
        """Each class predicted in an image (not the background, 0), over its predicted mask."""
        dev = x.device
        pred = torch.cat([adapter(x[s]).argmax(1) for s in chunks(len(x), batch_size)])
        image, cls = [], []
        for i in range(len(x)):
            for c in torch.unique(pred[i]).tolist():
                if c != 0 and int((pred[i] == c).sum()) >= self.MIN_PIXELS:
                    image.append(i)
                    cls.append(c)
        order = round_robin(image)[:cap]
        image_t = torch.tensor([image[i] for i in order], device=dev, dtype=torch.long)
        cls_t = torch.tensor([cls[i] for i in order], device=dev, dtype=torch.long)
        return Targets(image=image_t, cls=cls_t, role=["mask"] * len(order), mask=pred[image_t] == cls_t[:, None, None])
