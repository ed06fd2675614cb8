"""Detectors: predictions are per image {boxes, scores, labels} at mAP confidence; references K x 5
(class, x1, y1, x2, y2) in pixels; the score is mAP50."""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

from auditor.metrics import detection_map
from auditor.models.base import BOX_TARGETS, MAP_CONF, SHOW_CONF
from auditor.stats_detection import AP50
from auditor.targets import Targets, chunks, round_robin
from auditor.tasks.base import Task
from auditor.tasks.warp import warp_boxes


class Detect(Task):
    name = "detect"
    metric = "map50"

    def predict(self, adapter, x: torch.Tensor) -> list[dict]:
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
        """The boxes shown (confidence >= SHOW_CONF) as K x 5 references."""
        return [torch.cat([d["labels"][:, None].float(), d["boxes"]], 1)[d["scores"] >= SHOW_CONF] for d in clean_pred]

    def warp(self, items, affine, size):
        return warp_boxes(items, affine, *size)

    def score(self, pred, reference, adapter) -> float:
        return detection_map(pred, reference, map50_only=True)["map50"]

    def estimates(self, pred, reference, adapter) -> dict:
        """mAP50 as an Estimate over the images (its intervals; the reported figure stays `score`'s)."""
        return {self.metric: AP50.of_boxes(pred, reference)}

    def agreement(self, pred, reference) -> torch.Tensor:
        """Share of reference boxes still found (IoU >= 0.5, same class, shown confidence)."""
        return torch.tensor(
            [f.double().mean().item() if len(f) else 1.0 for f in self.found(pred, reference)], dtype=torch.float64
        )

    def found(self, pred, reference) -> list[torch.Tensor]:
        """Per image, whether each reference box is detected (IoU >= 0.5, same class, shown confidence)."""
        out = []
        for d, ref in zip(pred, reference):
            keep = d["scores"] >= SHOW_CONF
            boxes, labels = d["boxes"][keep], d["labels"][keep]
            if len(ref) == 0 or len(boxes) == 0:
                out.append(torch.zeros(len(ref), dtype=torch.bool))
                continue
            ref = ref.to(boxes.device)
            iou = box_iou(ref[:, 1:5], boxes) * (ref[:, :1].long() == labels[None])
            out.append(iou.max(1).values >= 0.5)
        return out

    def nothing_to_measure(self, pred, reference, labelled: bool) -> str | None:
        n, objects = len(reference), sum(len(r) for r in reference)
        if objects == 0:
            if labelled:
                return f"the labels hold no object on any of the {n} images"
            return (
                f"the detector finds no object (confidence {SHOW_CONF}) on any of the {n} clean images, and label-free "
                "its clean boxes are the reference: there is nothing for an attack, a shift or a patch to take away"
            )
        if labelled and not any(bool(f.any()) for f in self.found(pred, reference)):
            return (
                f"the detector finds none of the {objects} labelled objects on the clean images (IoU 0.5, confidence "
                f"{SHOW_CONF}): there is nothing for an attack, a shift or a patch to take away"
            )
        return None

    # ---- augment ----------------------------------------------------------------------------------------

    def has_objects(self, reference) -> torch.Tensor:
        return torch.tensor([float(len(r) > 0) for r in reference], dtype=torch.float64)

    # ---- attacks ----------------------------------------------------------------------------------------

    attack_disappearance = True
    attack_gallery = "boxes"
    # ---- gradcam ----------------------------------------------------------------------------------------
    label_kind = "boxes"
    explain_images = 8
    explain_faithful_rows = 8
    explain_row = "one detected box"
    explain_nothing = f"boxes at confidence {SHOW_CONF}"
    explain_score = "the box's class score"
    explain_gallery = "{method} per detected box: the map of the box's class score (box drawn)"
    randomised_unit = "block"

    def randomised_group(self, layer: str) -> str:
        """Blocks (model.22, model.21, ...): an ultralytics head's last layer in running order serves one
        pyramid level only, so randomising it alone would leave the other levels' maps as they were.
        torchvision's names: a one-stage model's classification and regression heads run side by side on
        the same features, so they are one unit ("head"; the regression head runs last, and randomised
        alone it left RetinaNet's class scores and maps as they were, rank correlation 1.00); the backbone
        goes block by block (backbone.body.layer4, ...), not as one unit."""
        parts = layer.split(".")
        if parts[0] == "head":
            return "head"
        return ".".join(parts[:3] if parts[:2] == ["backbone", "body"] else parts[:2])

    def explain_unsupported(self, adapter) -> str | None:
        if not adapter.supports(BOX_TARGETS):
            return (
                "per-box maps need a detector whose boxes map to head outputs (ultralytics, torchvision's "
                "R-CNN, RetinaNet, FCOS and SSD); this one has none"
            )
        return None

    @torch.no_grad()
    def explain_targets(self, adapter, x: torch.Tensor, labels, cap: int, batch_size: int) -> Targets:
        """Each box shown (confidence >= SHOW_CONF): its class score at its origin (the head's column that holds
        it; a two-stage model's proposal region)."""
        dev = x.device
        found = [d for s in chunks(len(x), batch_size) for d in adapter.detect_with_anchors(adapter(x[s]))]
        image = [i for i, (d, _) in enumerate(found) for _ in range(len(d["labels"]))]
        order = round_robin(image)[:cap]
        cls = torch.cat([d["labels"] for d, _ in found]) if image else torch.zeros(0, dtype=torch.long, device=dev)
        anchors = torch.cat([a for _, a in found]) if image else torch.zeros(0, dtype=torch.long, device=dev)
        boxes = torch.cat([d["boxes"] for d, _ in found]) if image else torch.zeros(0, 4, device=dev)
        idx = torch.tensor(order, dtype=torch.long, device=dev)
        return Targets(
            image=torch.tensor([image[i] for i in order], dtype=torch.long, device=dev),
            cls=cls[idx],
            role=["box"] * len(order),
            anchor=anchors[idx],
            box=boxes[idx],
        )
