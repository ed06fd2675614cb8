"""Instance segmenters (ultralytics -seg models): detectors whose every box has a mask.

Predictions are the detector's {boxes, scores, labels} plus "masks" (N_i x h x w bool, at the model's prototype
grid). A reference with masks is an `Instances`: the detector's per-image K x 5 boxes (a list, so everything that
reads a detector's reference reads it unchanged) with each image's K x h x w masks beside them. Label-free, the
clean prediction's shown boxes and masks are the reference; labels without masks leave the masks unscored.

Scores: box mAP50 stays the task's metric (what the attacks' worst case and the score are judged on); mask
mAP50 is scored beside it, in the same torchmetrics evaluation, as `mask_map50`.

Explanations: a row is one shown instance; its score is its mask logits summed over the mask it shows clean
(mean mask probability there, for deletion and insertion). The box's class score would explain the class
decision, which a detector's rows already do; the mask is what this head adds, and a pixel's share in painting
it is what a reviewer of a segmenter asks about. It is the instance form of the segmenter's row (its class
logits summed over its mask).
"""

from __future__ import annotations

import torch

from auditor.metrics import detection_map
from auditor.models.base import SHOW_CONF
from auditor.stats_detection import AP50
from auditor.targets import Targets, chunks, round_robin
from auditor.tasks.detect import Detect
from auditor.tasks.warp import warp_boxes, warp_images


class Instances(list):
    """Per image a K x 5 reference (class, x0, y0, x1, y1 in input pixels), and `masks`: per image K x h x w bool."""

    def __init__(self, boxes, masks):
        super().__init__(boxes)
        self.masks = list(masks)


class InstanceDetect(Detect):
    """The Detect task of a model with the INSTANCE_MASKS capability (task_of picks it)."""

    side_metrics = ("mask_map50",)

    def as_reference(self, clean_pred):
        """The instances shown (confidence >= SHOW_CONF): boxes as K x 5, and their masks."""
        keep = [d["scores"] >= SHOW_CONF for d in clean_pred]
        return Instances(super().as_reference(clean_pred), [d["masks"][k] for d, k in zip(clean_pred, keep)])

    def take(self, items, index):
        if not isinstance(items, Instances):
            return super().take(items, index)
        return Instances(super().take(list(items), index), super().take(items.masks, index))

    def to(self, items, device):
        if not isinstance(items, Instances):
            return super().to(items, device)
        return Instances(super().to(items, device), [m.to(device) for m in items.masks])

    def concat(self, parts: list):
        if not parts or not all(isinstance(p, Instances) for p in parts):
            return super().concat(parts)
        return Instances(super().concat(parts), [m for p in parts for m in p.masks])

    def warp(self, items, affine, size):
        """Boxes as a detector's are moved (dropped when less than half stays in the frame); each kept instance's
        mask through the same map at the prototype grid."""
        if not isinstance(items, Instances):
            return super().warp(items, affine, size)
        h, w = size
        # the row index stands in for the class, so the rows warp_boxes keeps can be read back
        indexed = [
            torch.cat([torch.arange(len(t), dtype=t.dtype, device=t.device)[:, None], t[:, 1:5]], 1) for t in items
        ]
        moved = warp_boxes(indexed, affine, h, w)
        boxes, masks = [], []
        for k, (t, m, mv) in enumerate(zip(items, items.masks, moved)):
            kept = mv[:, 0].long()
            boxes.append(torch.cat([t[kept, :1], mv[:, 1:5].to(t.dtype)], 1))
            masks.append(_warp_grid_masks(m, affine[k : k + 1], (h, w))[kept])
        return Instances(boxes, masks)

    def scores(self, pred, reference, adapter) -> dict[str, float]:
        """Box mAP50 and, where the reference has masks, mask mAP50 (one evaluation for both)."""
        if not isinstance(reference, Instances):
            return super().scores(pred, reference, adapter)
        grid = next((tuple(d["masks"].shape[-2:]) for d in pred), None)
        masks = [_on_grid(m, grid) for m in reference.masks]
        return detection_map(pred, reference, map50_only=True, target_masks=masks)

    def estimates(self, pred, reference, adapter) -> dict:
        """Box mAP50 and, where the reference has masks, mask mAP50 (masks on the predictions' grid, as `scores`)."""
        if not isinstance(reference, Instances):
            return super().estimates(pred, reference, adapter)
        grid = next((tuple(d["masks"].shape[-2:]) for d in pred), None)
        return {
            "map50": AP50.of_boxes(pred, reference, with_masks=True),
            "mask_map50": AP50.of_masks(pred, reference, [_on_grid(m, grid) for m in reference.masks]),
        }

    # ---- gradcam ----------------------------------------------------------------------------------------

    explain_row = "one detected instance"
    explain_nothing = f"instances at confidence {SHOW_CONF}"
    explain_score = "the instance's mask logits summed over its mask"
    explain_gallery = "{method} per detected instance: the map of its mask logits summed over its mask (mask outlined)"

    @torch.no_grad()
    def explain_targets(self, adapter, x: torch.Tensor, labels, cap: int, batch_size: int) -> Targets:
        """Each instance shown (confidence >= SHOW_CONF): its head column, class, box, and its mask at the input
        size (the pixels its score sums over)."""
        dev = x.device
        heads, found = [], []  # per batch: the head's decoded outputs; per image: (detections, anchors)
        for s in chunks(len(x), batch_size):
            out = adapter(x[s])
            heads.append((out[0], None))  # (decoded, prototypes) only: the rest holds the pyramid's features
            found += adapter.detect_with_anchors(out)
        image = [i for i, (d, _) in enumerate(found) for _ in range(len(d["labels"]))]
        order = round_robin(image)[:cap]
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        cls = torch.cat([d["labels"] for d, _ in found]) if image else empty
        anchors = torch.cat([a for _, a in found]) if image else empty
        boxes = torch.cat([d["boxes"] for d, _ in found]) if image else torch.zeros(0, 4, device=dev)
        idx = torch.tensor(order, dtype=torch.long, device=dev)
        rows_image = torch.tensor([image[i] for i in order], dtype=torch.long, device=dev)
        masks = torch.zeros(len(order), *x.shape[-2:], dtype=torch.bool, device=dev)
        for b, s in enumerate(chunks(len(x), batch_size)):
            here = torch.nonzero((rows_image >= s.start) & (rows_image < s.stop)).flatten()
            if len(here):
                r = idx[here]
                masks[here] = adapter.input_masks(heads[b], rows_image[here] - s.start, anchors[r], boxes[r])
        return Targets(
            image=rows_image,
            cls=cls[idx],
            role=["instance"] * len(order),
            anchor=anchors[idx],
            box=boxes[idx],
            mask=masks,
        )


def _warp_grid_masks(masks: torch.Tensor, affine: torch.Tensor, size) -> torch.Tensor:
    """K x h x w masks on a grid coarser than the input (h = H / s) moved by one input-pixel affine (1 x 3 x 3)."""
    if len(masks) == 0:
        return masks
    h, w = masks.shape[-2:]
    sy, sx = size[0] / h, size[1] / w
    # grid cell j has its centre at input pixel s * j + (s - 1) / 2
    to_input = torch.tensor([[sx, 0, (sx - 1) / 2], [0, sy, (sy - 1) / 2], [0, 0, 1]], dtype=affine.dtype)
    on_grid = torch.linalg.inv(to_input) @ affine.cpu() @ to_input
    moved = warp_images(masks.float().cpu()[None], on_grid.to(torch.float32))[0]
    return (moved > 0.5).to(masks.device)


def _on_grid(masks: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
    """Reference masks on the predictions' grid (labels are drawn at a quarter of the input, ultralytics'
    mask_ratio; a head with another prototype grid gets them resampled, bilinear then > 0.5, as its validator does)."""
    if grid is None or tuple(masks.shape[-2:]) == grid:
        return masks
    if len(masks) == 0:
        return masks.new_zeros(0, *grid)
    return torch.nn.functional.interpolate(masks[None].float(), grid, mode="bilinear", align_corners=False)[0] > 0.5
