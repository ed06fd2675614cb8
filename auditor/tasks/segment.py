"""Segmenters: predictions and references are N x H x W class-id masks (255 = ignore); the score is mIoU."""

from __future__ import annotations

import math

import torch

from auditor.metrics import IGNORE_INDEX, mean_iou_score
from auditor.stats import MeanIoU
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

    def estimates(self, pred, reference, adapter) -> dict:
        """mIoU as an Estimate over the images: per image and class, its pixels' intersection and union."""
        return {self.metric: MeanIoU(*class_pixel_counts(pred, reference, adapter.num_classes))}

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

    def nothing_to_measure(self, pred, reference, labelled: bool) -> str | None:
        """Background is class 0, as gradcam's rows take it."""
        n, foreground = len(reference), (reference != 0) & (reference != IGNORE_INDEX)
        if not bool(foreground.any()):
            if labelled:
                return f"the masks label only background on all {n} images"
            return (
                f"the segmenter predicts only background on all {n} clean images, and label-free its clean masks are "
                "the reference: there is no object for an attack, a shift or a patch to take away"
            )
        if labelled and not bool(((pred == reference) & foreground).any()):
            return (
                f"the segmenter predicts none of the labelled object pixels on the {n} clean images: there is no "
                "object for an attack, a shift or a patch to take away"
            )
        return None

    # ---- attacks ----------------------------------------------------------------------------------------
    # A mask is not right or wrong as a whole, and an attack step costs as much as a detector's: the
    # sizes and checks are Task's defaults.
    attack_gallery = "masks"
    # APGD maximises the pixels' Jensen-Shannon divergence from the reference, not the cross-entropy the model was
    # trained on: the cross-entropy keeps rewarding pixels already flipped. On shapes-unet (16 held-out scenes, 20
    # steps) APGD left mIoU 0.806 / 0.619 / 0.323 / 0.227 at 1 / 2 / 4 / 8 /255 on the divergence against 0.819 /
    # 0.648 / 0.375 / 0.239 on the cross-entropy (the per-image lower of the two: 0.806 / 0.619 / 0.319 / 0.227,
    # so a second member on the cross-entropy was not worth its cost).
    attack_loss_name = "pixel JS divergence"

    def attack_loss(self, adapter, x, reference):
        return pixel_js_divergence(adapter(x), reference, getattr(adapter, "ignore_index", IGNORE_INDEX))

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


def class_pixel_counts(pred: torch.Tensor, reference: torch.Tensor, num_classes: int, chunk: int = 1 << 22):
    """Per image and class (n x C, int64), the intersection and the union of the predicted and the reference
    pixels, ignored pixels (255) left out: each image's confusion matrix by one bincount over
    (image * C + predicted) * C + reference, `chunk` pixels at a time."""
    n, c = len(pred), num_classes
    p, r = pred.reshape(n, -1), reference.reshape(n, -1)
    confusion = torch.zeros(n * c * c, dtype=torch.long)
    rows = max(1, chunk // max(1, p.shape[1]))
    for s in range(0, n, rows):
        ps, rs = p[s : s + rows].cpu().long(), r[s : s + rows].cpu().long()
        scored = (rs != IGNORE_INDEX) & (rs >= 0) & (rs < c) & (ps >= 0) & (ps < c)
        index = (torch.arange(s, s + len(ps))[:, None] * c + ps) * c + rs
        confusion += torch.bincount(index[scored], minlength=n * c * c)
    confusion = confusion.view(n, c, c)
    inter = confusion.diagonal(dim1=1, dim2=2)
    return inter, confusion.sum(2) + confusion.sum(1) - inter


def pixel_js_divergence(
    logits: torch.Tensor, reference: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Per image, the mean over its labelled pixels of the Jensen-Shannon divergence between the pixel's softmax p
    and its reference class y (one-hot), in nats, in [0, log 2]. Bounded, unlike the cross-entropy, so a step gains
    little from driving pixels already flipped further and goes to the ones still right (one of the losses of SEA,
    the segmentation attack ensemble of Croce, Singh & Hein, ECCV 2024). Against a one-hot it depends on q = p_y:
    JS = ((1 - q) log 2 + q log(2q / (1 + q)) - log((1 + q) / 2)) / 2."""
    valid = reference != ignore_index
    log_q = logits.float().log_softmax(1).gather(1, torch.where(valid, reference, 0)[:, None])[:, 0]
    q = log_q.exp()
    half_mean = torch.log1p(q) - math.log(2)  # log((1 + q) / 2)
    js = 0.5 * ((1 - q) * math.log(2) + q * (math.log(2) + log_q - torch.log1p(q)) - half_mean)
    per_pixel = torch.where(valid, js, torch.zeros_like(js))
    return per_pixel.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)
