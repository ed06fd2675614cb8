"""ultralytics -seg models: the detector of their boxes, and each box's instance mask.

A YOLOv8-seg head gives every candidate (head column, "anchor") 32 mask coefficients beside its box and class
scores, and each image 32 prototype masks at a quarter of the input size; an instance's mask is its
coefficients times the prototypes, binarised at 0 and cropped to its box. ultralytics' own functions do the
decoding (`ops.process_mask`, `ops.crop_mask`) and the loss (`v8SegmentationLoss`).

Predictions keep their masks at the prototype grid (H/4 x W/4), as ultralytics' SegmentationValidator scores
them: at the input size, the up to 300 masks an image keeps for mAP at confidence 0.001 would take 16 times the
memory (30 MB per 320 px image), and the attacks probe keeps a set of predictions per ε and attack. What gradcam
explains and draws is at the input size (`mask_logits`, `input_masks`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from auditor.models.base import BOX_TARGETS, INSTANCE_MASKS, SHOW_CONF
from auditor.models.ultralytics import DetectorAdapter, _decoded


def _protos(outputs) -> torch.Tensor:
    """The N x 32 x h x w prototype masks from a -seg head's eval output ((decoded, protos), raw)."""
    return outputs[0][1]


class InstanceAdapter(DetectorAdapter):
    """An ultralytics -seg model: `predict` gives per image {boxes, scores, labels, masks (N_i x H/4 x W/4 bool)}."""

    capabilities = frozenset({BOX_TARGETS, INSTANCE_MASKS})

    def detect_with_anchors(
        self, outputs, conf: float = SHOW_CONF
    ) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """The detector's boxes and anchors, each box with its instance mask at the prototype grid."""
        from ultralytics.utils.ops import process_mask

        found = super().detect_with_anchors(outputs, conf)
        coefficients = _decoded(outputs).detach()[:, 4 + self.num_classes :]  # N x 32 x anchors
        protos = _protos(outputs).detach()
        for i, (d, anchors) in enumerate(found):
            # upsample=False: the prototype grid, where ultralytics' validator scores masks
            d["masks"] = process_mask(protos[i], coefficients[i][:, anchors].T, d["boxes"], self.input_size).bool()
        return found

    def mask_logits(self, outputs, images: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """R x H x W: the mask logits (uncropped) of the instance at column anchors[r] of image images[r] of the
        batch, at the input size, from `outputs` itself so gradients reach the input. Upsampled bilinearly before
        any threshold, as ultralytics' process_mask(upsample=True) does."""
        coefficients = _decoded(outputs)[images, 4 + self.num_classes :, anchors]  # R x 32
        logits = torch.einsum("rc,rchw->rhw", coefficients, _protos(outputs)[images])
        return F.interpolate(logits[None], self.input_size, mode="bilinear", align_corners=False)[0]

    def input_masks(self, outputs, images: torch.Tensor, anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """R x H x W bool: those instances' masks at the input size (logits > 0, cropped to their boxes)."""
        from ultralytics.utils.ops import crop_mask

        if len(anchors) == 0:
            return torch.zeros(0, *self.input_size, dtype=torch.bool, device=anchors.device)
        return crop_mask((self.mask_logits(outputs, images, anchors) > 0).byte(), boxes).bool()

    def instance_scores(
        self, outputs, anchors: torch.Tensor, masks: torch.Tensor, probability: bool = False
    ) -> torch.Tensor:
        """Row i (image i of the batch): the mask logits of the instance at anchors[i] summed over masks[i]
        (R x H x W, the pixels it showed clean), or with probability its mask probability averaged there."""
        rows = torch.arange(len(anchors), device=anchors.device)
        logits = self.mask_logits(outputs, rows, anchors)
        m = masks.to(logits.dtype)
        if probability:
            return (logits.sigmoid() * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
        return (logits * m).flatten(1).sum(1)

    def loss(self, outputs, targets) -> torch.Tensor:
        """ultralytics' segmentation training loss (box + mask + cls + DFL) where the targets carry instance
        masks (auditor.tasks.instances.Instances); the box loss alone where they do not (labels without masks)."""
        masks = getattr(targets, "masks", None)
        if masks is None:
            return super().loss(outputs, targets)
        if getattr(self, "_mask_criterion", None) is None:
            from ultralytics.utils.loss import v8SegmentationLoss

            self._mask_criterion = v8SegmentationLoss(self.net)
            self._mask_criterion.overlap = False  # one mask per instance, not ultralytics' index-coded overlap masks
        batch = self.loss_batch(targets)
        batch["masks"] = torch.cat([m.to(self.mean.device).float() for m in masks])
        total, _ = self._mask_criterion(outputs, batch)
        n = len(targets)
        return total.sum().expand(n) / n
