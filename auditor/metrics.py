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


def detection_map(
    preds: list[dict], targets: list[torch.Tensor], *, map50_only: bool = False, target_masks: list | None = None
) -> dict[str, float]:
    """COCO-style mAP50 and mAP50-95 (torchmetrics, pycocotools backend) for boxes in pixels.

    preds: per image {boxes xyxy, scores, labels}; targets: per image K x 5 (class, x0, y0, x1, y1).
    map50_only: evaluate the 0.5 IoU threshold alone (the same mAP50, without the other nine
    thresholds' matching: a third of the augment probe's time on shapes-yolov8n went there).
    target_masks: per image K x h x w bool instance masks of the targets; the predictions then carry "masks"
    (N x h x w bool) too, and mask_map50 (mask_map50_95) is scored beside the boxes' in the same evaluation.
    """
    from torchmetrics.detection import MeanAveragePrecision

    with_masks = target_masks is not None
    metric = MeanAveragePrecision(
        iou_type=("bbox", "segm") if with_masks else "bbox",
        box_format="xyxy",
        iou_thresholds=[0.5] if map50_only else None,
    )
    metric.warn_on_many_detections = False  # COCO's 100 boxes per image, lowest scores dropped: intended
    pred_rows = [
        {"boxes": p["boxes"].float().cpu(), "scores": p["scores"].float().cpu(), "labels": p["labels"].long().cpu()}
        for p in preds
    ]
    target_rows = [{"boxes": t[:, 1:5].float().cpu(), "labels": t[:, 0].long().cpu()} for t in targets]
    if with_masks:
        for row, p in zip(pred_rows, preds):
            row["masks"] = p["masks"].bool().cpu()
        for row, m in zip(target_rows, target_masks):
            row["masks"] = m.bool().cpu()
    metric.update(pred_rows, target_rows)
    result = metric.compute()
    kinds = {"": "bbox_", "mask_": "segm_"} if with_masks else {"": ""}
    out = {}
    for name, prefix in kinds.items():
        out[f"{name}map50"] = max(float(result[f"{prefix}map_50"]), 0.0)
        if not map50_only:
            out[f"{name}map50_95"] = max(float(result[f"{prefix}map"]), 0.0)
    return out


def iou_counts(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and class, the intersection and union in pixels (N x C each; target pixels at ignore_index left
    out): what stats.MeanIoU resamples by image, and summed over images the counts of `mean_iou_score`.

    torchmetrics' JaccardIndex keeps one confusion matrix for the whole batch; one bincount over (image, true,
    predicted) gives every image's matrix at once instead of a metric call per image.
    """
    n, c = len(pred), num_classes
    keep = target != ignore_index
    image = torch.arange(n, device=pred.device).view(n, *[1] * (pred.dim() - 1)).expand_as(pred)
    cells = (image * c * c + target.long() * c + pred.long())[keep]
    confusion = torch.bincount(cells, minlength=n * c * c).view(n, c, c)  # image, true, predicted
    inter = confusion.diagonal(dim1=1, dim2=2)
    return inter, confusion.sum(2) + confusion.sum(1) - inter
