"""AP50 as an auditor.stats Estimate: COCO's mAP at IoU 0.5 over a set of images, with bootstrap replicates.

Why hand-written: the reported mAP50 is torchmetrics' MeanAveragePrecision (pycocotools underneath), but it has no
way to weight images, and recomputing it on each of the 500 shared resamples would cost 500 times its time
(pycocotools' matching and accumulation run in Python per image and class: minutes per interval on a few hundred
images). What a resample changes is only how often each image counts: COCO matches detections to ground truth
within an image, so the matching is done once here, following pycocotools' rules, and a resample recomputes the
precision-recall curve alone, with each image's detections and ground-truth counts weighted by its resample count,
for all draws at once. At unit weights it is pycocotools' AP50 as torchmetrics drives it (tests/test_stats_tasks.py
checks it against auditor.metrics.detection_map, and a resample against torchmetrics on the images repeated).

pycocotools' rules kept here (COCOeval.evaluateImg and accumulate, area range "all", no crowd, nothing ignored):
per image and class the detections are sorted by score (stable: ties keep their order) and the first 100 kept
(maxDets); each detection in turn takes the unmatched ground truth of its class with the highest IoU >= 0.5, the
last one of equal IoUs; per class the detections of all images are sorted by score (stable: ties by image, then by
their order in the image), precision is TP / (TP + FP + eps), its envelope is read at 101 recall thresholds
(torchmetrics' float32 linspace) by the first point whose recall reaches each; a class counts when it has ground
truth, and mAP is the mean over those classes. Box IoU is computed as pycocotools computes it from the float32 xywh
boxes torchmetrics hands it; mask IoU as intersection over union of the pixel sets (0 for two empty masks).

Weighted, an image drawn k times adds k to TP or FP at each of its detections and k times its ground truth to the
class's count: the curve of the images repeated k times (their copies next to each other), exactly where no two
detections of one class in one image tie in score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from auditor.stats import Estimate

IOU_THRESHOLD = 0.5
MAX_DETS = 100  # pycocotools' maxDets[-1], per image and class
REC_THRESHOLDS = torch.linspace(0.0, 1.0, 101).double()  # torchmetrics' (float32), as COCOeval receives them
AREA_ALL = 1e10  # COCO's area range "all": 0 to 1e5 ** 2
EPS = float(np.spacing(1))  # pycocotools' precision = tp / (tp + fp + eps)


def coco_xywh(boxes: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Per image, its xyxy boxes as the float32 xywh torchmetrics hands pycocotools (float64 arrays): one conversion
    for all images."""
    sizes = [len(b) for b in boxes]
    if not sizes:
        return []
    b = torch.cat([x.detach().cpu().float().reshape(-1, 4) for x in boxes])
    xywh = torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], 1).double().numpy()
    return np.split(xywh, np.cumsum(sizes)[:-1])


def coco_box_iou(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """D x G IoU of xywh boxes, as pycocotools' bbIou computes it (float64)."""
    d, g = d[:, None], g[None]
    w = np.minimum(d[..., 0] + d[..., 2], g[..., 0] + g[..., 2]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 1] + d[..., 3], g[..., 1] + g[..., 3]) - np.maximum(d[..., 1], g[..., 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    union = d[..., 2] * d[..., 3] + g[..., 2] * g[..., 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def mask_iou(dt: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
    """D x G IoU of bool masks (D x h x w, G x h x w) as pixel sets (float64; exact: float32 sums of 0/1 < 2^24)."""
    p, g = dt.detach().cpu().flatten(1).float(), gt.detach().cpu().flatten(1).float()
    inter = (p @ g.T).double()
    union = p.sum(1).double()[:, None] + g.sum(1).double()[None] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), 0.0).numpy()


def outside(area: np.ndarray | None, n: int) -> np.ndarray:
    """Whether each area is outside COCO's range "all" (0 to 1e10): such a ground truth is ignored, and such a
    detection too where it matches nothing."""
    return np.zeros(n, dtype=bool) if area is None else (area < 0) | (area > AREA_ALL)


def match_image(iou: np.ndarray, det_labels: np.ndarray, gt_labels: np.ndarray, gt_ignored: np.ndarray) -> np.ndarray:
    """Per detection (given in COCO's order: by score, stable): 1 matched, 0 not, -1 matched to an ignored ground
    truth. Greedily, each detection takes the unmatched ground truth of its class with the highest IoU >= 0.5 (the
    last of equal IoUs), among those not ignored first, else among the ignored."""
    status = np.zeros(len(det_labels), dtype=np.int64)
    if iou.size == 0:
        return status
    iou = np.where(det_labels[:, None] == gt_labels[None], iou, -1.0)
    candidate = iou >= IOU_THRESHOLD
    if not gt_ignored.any() and (candidate.sum(0) <= 1).all():  # no ground truth wanted twice: nothing to arbitrate
        return candidate.any(1).astype(np.int64)
    taken = np.zeros(len(gt_labels), dtype=bool)
    for d in np.flatnonzero(candidate.any(1)):
        for ignored in (False, True):
            row = np.where(taken | (gt_ignored != ignored), -1.0, iou[d])
            best = row.max()
            if best >= IOU_THRESHOLD:
                taken[len(row) - 1 - int(np.argmax(row[::-1] == best))] = True
                status[d] = -1 if ignored else 1
                break
    return status


def _kept(scores: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """An image's detections that COCO evaluates, in its order: by score (stable), the first MAX_DETS of each class,
    of the classes with ground truth (the others' detections change no class's AP)."""
    order = np.argsort(-scores, kind="stable")
    by_class = order[np.argsort(labels[order], kind="stable")]
    first = np.searchsorted(labels[by_class], labels[by_class], side="left")
    rank = np.empty(len(order), dtype=np.int64)
    rank[by_class] = np.arange(len(order)) - first  # rank within its class
    return order[(rank[order] < MAX_DETS) & np.isin(labels[order], classes)]


def _through_last_hit(group: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """Which rows (grouped by class, in COCO's order) come no later than their class's last true positive. The rest
    change no resample's AP: after the last TP a point has the final recall and lower precision, so neither the
    envelope nor the points the recall thresholds read move. At 0.001 confidence they are most detections."""
    pos = np.arange(len(group))
    last = np.full(int(group.max()) + 1 if len(group) else 0, -1)
    np.maximum.at(last, group[hit].astype(np.int64), pos[hit])
    return pos <= last[group.astype(np.int64)] if len(group) else np.zeros(0, dtype=bool)


@dataclass
class AP50(Estimate):
    """COCO mAP at IoU 0.5 over n images. image / tp / fp: per detection kept (grouped by class, each class's in
    COCO's order), its image and whether it is a true or a false positive (neither: ignored); starts: where each
    class's detections begin (C + 1 offsets); gt: n x C counts of ground truth not ignored. Build it with
    `AP50.matched` (or of_boxes, of_masks)."""

    image: torch.Tensor
    tp: torch.Tensor
    fp: torch.Tensor
    starts: torch.Tensor
    gt: torch.Tensor
    value: float | None = field(init=False)

    def __post_init__(self):
        self.gt = torch.as_tensor(self.gt, dtype=torch.float64)
        self.tp = torch.as_tensor(self.tp, dtype=torch.float64)
        self.fp = torch.as_tensor(self.fp, dtype=torch.float64)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        v = float(self.replicates(torch.ones(1, len(self.gt), dtype=torch.float64))[0]) if len(self.gt) else math.nan
        self.value = None if math.isnan(v) else v

    @classmethod
    def matched(
        cls,
        scores: Sequence[torch.Tensor],
        labels: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
        iou: Callable[[int, np.ndarray], np.ndarray],
        det_area: Callable[[int, np.ndarray], np.ndarray] | None = None,
        gt_area: Sequence[np.ndarray] | None = None,
    ) -> AP50:
        """From per image detection scores and labels, ground-truth labels, and iou(i, kept): the IoU of image i's
        detections at indices `kept` (COCO's order) with its ground truth (len(kept) x G). det_area(i, kept) and
        gt_area (per image) are the areas COCO's range is checked on; None: all in range."""
        gts = [torch.as_tensor(g).detach().cpu().long().reshape(-1).numpy() for g in gt_labels]
        ignored = [outside(None if gt_area is None else gt_area[i], len(g)) for i, g in enumerate(gts)]
        classes = np.unique(np.concatenate(gts)) if gts else np.zeros(0, dtype=np.int64)  # classes with ground truth
        gt = np.zeros((len(gts), len(classes)))
        for i, (g, ig) in enumerate(zip(gts, ignored)):
            gt[i] = (g[~ig, None] == classes[None]).sum(0)
        rows = []  # per image: (class index, -score, image, index in image, status) of its kept detections
        for i, (s, lab) in enumerate(zip(scores, labels)):
            s = s.detach().cpu().float().double().numpy()  # float32, as torchmetrics hands pycocotools the scores
            lab = lab.detach().cpu().long().numpy()
            kept = _kept(s, lab, classes)
            if len(kept) == 0:
                continue
            status = match_image(iou(i, kept), lab[kept], gts[i], ignored[i])
            status[(status == 0) & outside(None if det_area is None else det_area(i, kept), len(kept))] = -1
            rows.append(np.stack([np.searchsorted(classes, lab[kept]), -s[kept], np.full(len(kept), i), kept, status]))
        table = np.concatenate(rows, 1) if rows else np.zeros((5, 0))
        table = table[:, np.lexsort(table[[3, 2, 1, 0]])]  # by class, then score (descending), image, index in image
        table = table[:, _through_last_hit(table[0], table[4] == 1)]
        starts = np.searchsorted(table[0], np.arange(len(classes) + 1))
        image, status = torch.from_numpy(table[2]).long(), torch.from_numpy(table[4])
        return cls(image, status == 1, status == 0, torch.from_numpy(starts), gt)

    @classmethod
    def of_boxes(cls, preds: Sequence[dict], references: Sequence[torch.Tensor], with_masks: bool = False) -> AP50:
        """Box AP50 of per image {boxes xyxy, scores, labels} against K x 5 (class, x0, y0, x1, y1) references.
        with_masks: scored in one evaluation with masks (torchmetrics' bbox + segm), where a reference's area is its
        mask's, never out of range; alone, a reference box with swapped corners has a negative area and is ignored."""
        det, gt = coco_xywh([p["boxes"] for p in preds]), coco_xywh([r[:, 1:5] for r in references])
        return cls.matched(
            [p["scores"] for p in preds],
            [p["labels"] for p in preds],
            [r[:, 0] for r in references],
            lambda i, kept: coco_box_iou(det[i][kept], gt[i]),
            det_area=lambda i, kept: det[i][kept, 2] * det[i][kept, 3],  # negative for swapped corners in one axis
            gt_area=None if with_masks else [g[:, 2] * g[:, 3] for g in gt],
        )

    @classmethod
    def of_masks(cls, preds: Sequence[dict], references: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> AP50:
        """Mask AP50: the detections' "masks" against the references' masks (K x h x w, on the same grid)."""
        return cls.matched(
            [p["scores"] for p in preds],
            [p["labels"] for p in preds],
            [r[:, 0] for r in references],
            lambda i, kept: mask_iou(preds[i]["masks"][torch.from_numpy(kept)], masks[i]),
        )

    def replicates(self, weights: torch.Tensor) -> torch.Tensor:
        if self._cache is not None and self._cache[0] is weights:  # intervals and paired ask for the same draws
            return self._cache[1]
        w = torch.as_tensor(weights, dtype=torch.float64)
        draws = len(w)
        npig = w @ self.gt  # draws x C weighted ground truth
        dw = w[:, self.image]  # draws x D: each detection weighted by its image's count
        tp_w, fp_w = dw * self.tp, dw * self.fp
        ap = torch.full((draws, len(self.starts) - 1), math.nan, dtype=torch.float64)
        thresholds = REC_THRESHOLDS.expand(draws, -1).contiguous()
        for k, (s, e) in enumerate(zip(self.starts[:-1].tolist(), self.starts[1:].tolist())):
            counted = npig[:, k] > 0
            if e == s:
                ap[:, k] = torch.where(counted, 0.0, math.nan)
                continue
            tp, fp = tp_w[:, s:e].cumsum(1), fp_w[:, s:e].cumsum(1)
            recall = tp / npig[:, k : k + 1].clamp_min(1e-300)
            precision = tp / (tp + fp + EPS)
            envelope = precision.flip(1).cummax(1).values.flip(1)
            envelope = torch.cat([envelope, torch.zeros(draws, 1, dtype=torch.float64)], 1)  # recall never reached
            at = torch.searchsorted(recall.contiguous(), thresholds, side="left")
            ap[:, k] = torch.where(counted, envelope.gather(1, at).mean(1), math.nan)
        out = ap.nanmean(1)  # classes without ground truth in a draw left out; none left: NaN
        self._cache = (weights, out)
        return out
