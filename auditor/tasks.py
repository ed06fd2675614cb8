"""Per-task handling of predictions and references, so that probes are written once for all tasks.

A probe asks the task's ops to predict a batch, join batches, slice, score against the
reference (accuracy, mIoU or mAP50) and say how much one image's prediction still agrees
with its reference (for choosing examples to show).
"""

from __future__ import annotations

from typing import Any

import torch

from auditor.metrics import detection_map, mean_iou_score


class ClassifyOps:
    metric = "accuracy"

    def predict(self, adapter, x: torch.Tensor) -> torch.Tensor:
        return adapter.predict(x).cpu()

    def concat(self, parts: list) -> Any:
        return torch.cat(parts)

    def take(self, items, index):
        """Items at a slice, or at a list of indices."""
        return items[index] if isinstance(index, slice) else items[torch.as_tensor(index, dtype=torch.long)]

    def to(self, items, device):
        return items.to(device)

    def reference(self, data, clean_pred):
        return data.labels.long() if data.labelled else self.as_reference(clean_pred)

    def as_reference(self, clean_pred):
        """The clean prediction in the form of a reference (label-free audits, flip rates)."""
        return clean_pred.clone()

    def warp(self, items, affine, size):
        """References moved with a geometric shift (affine: B x 3 x 3, output -> input pixel); labels stay."""
        return items

    def score(self, pred, reference, adapter) -> float:
        return (pred == reference).double().mean().item()

    def agreement(self, pred, reference) -> torch.Tensor:
        return (pred == reference).double()

    def image_score(self, pred, reference, num_classes: int) -> torch.Tensor:
        """Each image's own score against its reference, in [0, 1]: what "this image broke" is judged on."""
        return self.agreement(pred, reference)


class SegmentOps(ClassifyOps):
    metric = "miou"

    def warp(self, items, affine, size):
        from auditor.shifts import warp_masks

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


class DetectOps:
    """Predictions: per image {boxes, scores, labels} at mAP confidence; references: K x 5 (class, xyxy)."""

    metric = "map50"

    def predict(self, adapter, x: torch.Tensor) -> list[dict]:
        from auditor.models.base import MAP_CONF

        return [{k: v.cpu() for k, v in d.items()} for d in adapter.predict(x, conf=MAP_CONF)]

    def concat(self, parts: list) -> list:
        return [d for part in parts for d in part]

    def take(self, items, index):
        return items[index] if isinstance(index, slice) else [items[int(i)] for i in index]

    def to(self, items, device):
        return [t.to(device) for t in items]

    def reference(self, data, clean_pred):
        return data.labels if data.labelled else self.as_reference(clean_pred)

    def as_reference(self, clean_pred):
        return [
            torch.cat([d["labels"][:, None].float(), d["boxes"]], 1)[d["scores"] >= _show_conf()] for d in clean_pred
        ]

    def warp(self, items, affine, size):
        from auditor.shifts import warp_boxes

        return warp_boxes(items, affine, *size)

    def score(self, pred, reference, adapter) -> float:
        return detection_map(pred, reference, map50_only=True)["map50"]

    def agreement(self, pred, reference) -> torch.Tensor:
        """Share of reference boxes still found (IoU >= 0.5, same class, shown confidence)."""
        return torch.tensor(
            [f.double().mean().item() if len(f) else 1.0 for f in self.found(pred, reference)], dtype=torch.float64
        )

    def image_score(self, pred, reference, num_classes: int) -> torch.Tensor:
        return self.agreement(pred, reference)

    def found(self, pred, reference) -> list[torch.Tensor]:
        """Per image, whether each reference box is detected (IoU >= 0.5, same class, shown confidence)."""
        from torchvision.ops import box_iou

        out = []
        for d, ref in zip(pred, reference):
            keep = d["scores"] >= _show_conf()
            boxes, labels = d["boxes"][keep], d["labels"][keep]
            if len(ref) == 0 or len(boxes) == 0:
                out.append(torch.zeros(len(ref), dtype=torch.bool))
                continue
            ref = ref.to(boxes.device)
            iou = box_iou(ref[:, 1:5], boxes) * (ref[:, :1].long() == labels[None])
            out.append(iou.max(1).values >= 0.5)
        return out


def _show_conf() -> float:
    from auditor.models.base import SHOW_CONF

    return SHOW_CONF


@torch.no_grad()
def predict_all(adapter, data, ops, batch_size: int, device) -> Any:
    """The model's clean predictions on the whole set, batch by batch, joined."""
    return ops.concat([ops.predict(adapter, x) for x, _ in data.batches(batch_size, device)])


OPS = {"classify": ClassifyOps(), "segment": SegmentOps(), "detect": DetectOps()}


def ops_for(task: str):
    return OPS[task]
