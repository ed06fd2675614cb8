"""Task metrics, from torchmetrics rather than hand-rolled.

torchmetrics is imported where a metric is computed: it adds about 0.9 s to every start of the
program, and only detectors and segmenters are scored with it.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = 255


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    return (pred == target).double().mean().item()


def mean_iou_score(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> float:
    """Mean over classes of IoU on all pixels of all images together (ignore_index excluded).

    Classes absent from both prediction and target are left out of the mean rather than
    counted as 0 or 1.
    """
    from torchmetrics.classification import MulticlassJaccardIndex

    metric = MulticlassJaccardIndex(
        num_classes=num_classes, ignore_index=ignore_index, average="none", zero_division=float("nan")
    ).to(pred.device)
    per_class = metric(pred, target)
    present = ~torch.isnan(per_class)
    return per_class[present].mean().item() if present.any() else float("nan")


def detection_map(preds: list[dict], targets: list[torch.Tensor], *, map50_only: bool = False) -> dict[str, float]:
    """COCO-style mAP50 and mAP50-95 (torchmetrics, pycocotools backend) for boxes in pixels.

    preds: per image {boxes xyxy, scores, labels}; targets: per image K x 5 (class, x0, y0, x1, y1).
    map50_only: evaluate the 0.5 IoU threshold alone (the same mAP50, without the other nine
    thresholds' matching: a third of the augment probe's time on shapes-yolov8n went there).
    """
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy", iou_thresholds=[0.5] if map50_only else None)
    metric.warn_on_many_detections = False  # COCO's 100 boxes per image, lowest scores dropped: intended
    metric.update(
        [
            {"boxes": p["boxes"].float().cpu(), "scores": p["scores"].float().cpu(), "labels": p["labels"].long().cpu()}
            for p in preds
        ],
        [{"boxes": t[:, 1:5].float().cpu(), "labels": t[:, 0].long().cpu()} for t in targets],
    )
    result = metric.compute()
    if map50_only:
        return {"map50": max(float(result["map_50"]), 0.0)}
    return {"map50": max(float(result["map_50"]), 0.0), "map50_95": max(float(result["map"]), 0.0)}
