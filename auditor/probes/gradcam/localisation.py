"""Localisation: where the maps fall, against the ground truth and against the image frame.

The share of the map inside the object and the pointing game (Zhang et al. 2016) where
objects are known (boxes, masks); and, for every task, how much of the maps' mass lies in
the image's outer band, a location shortcut that robustness numbers do not show.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from auditor.probes.gradcam.details import Border, BorderClass, Localisation
from auditor.probes.gradcam.figures import LABELS
from auditor.results import Finding
from auditor.targets import Targets
from auditor.tasks import Task

# Where the model looks: the outer BORDER share of each side (10%: 36% of the area). A class whose maps
# put more than BORDER_FLAG of their mass there looks at the frame or background rather than the object,
# a shortcut (watermarks, padding, photographer's framing) that robustness numbers do not show.
BORDER, BORDER_FLAG, BORDER_MIN_ROWS = 0.10, 0.5, 3
MATCH_IOU = 0.5  # a detected box is localised against the ground-truth box of its class it overlaps this much


def energy_in_object(maps: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """Share of each (non-negative) map's mass inside its object mask (N x H x W bool); NaN for an empty map."""
    total = maps.flatten(1).sum(1)
    inside = (maps * objects).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-12), torch.full_like(total, float("nan")))


def pointing_hits(maps: torch.Tensor, objects: torch.Tensor, tolerance: int) -> torch.Tensor:
    """Whether each map's maximum lies on its object or within `tolerance` pixels of it (Zhang et al. 2016)."""
    n, h, w = maps.shape
    peak = maps.flatten(1).argmax(dim=1)
    py, px = peak // w, peak % w
    if tolerance > 0:
        objects = F.max_pool2d(objects.float()[:, None], 2 * tolerance + 1, stride=1, padding=tolerance)[:, 0] > 0
    return objects[torch.arange(n, device=maps.device), py, px]


def box_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """K x 4 xyxy boxes in pixels -> K x H x W masks of the pixels whose centres they cover."""
    h, w = size
    ys = torch.arange(h, device=boxes.device).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=boxes.device).view(1, 1, w) + 0.5
    x0, y0, x1, y1 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    return (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)


# ---- against the ground truth -----------------------------------------------------------------------------


def mask_object(label: torch.Tensor, t: Targets, r: int, size, device) -> torch.Tensor | None:
    """A segmenter's row: the ground-truth pixels of its class."""
    return label == int(t.cls[r])


def box_object(label: torch.Tensor, t: Targets, r: int, size, device) -> torch.Tensor | None:
    """A detector's row: the ground-truth box of the same class that the detected box overlaps most (IoU >= 0.5)."""
    gt = label.to(device)
    gt = gt[gt[:, 0].long() == int(t.cls[r])]
    if len(gt) == 0:
        return None
    iou = box_iou(t.box[r : r + 1].float(), gt[:, 1:5].float())[0]
    if iou.max() < MATCH_IOU:
        return None
    return box_masks(gt[iou.argmax(), 1:5].view(1, 4).float(), size)[0]


# What a row is localised against, by the kind of label its task has (Task.label_kind); a classifier's
# label (a class id) has no object.
OBJECT_OF = {"mask": mask_object, "boxes": box_object}


def row_objects(task: Task, t: Targets, labels, size, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Each row's ground-truth object (rows x H x W) and whether it has one; None where the task's labels
    (or their absence) give no objects."""
    object_of = OBJECT_OF.get(task.label_kind)
    if labels is None or object_of is None:
        return None
    objects = torch.zeros(len(t), *size, dtype=torch.bool, device=device)
    known = torch.zeros(len(t), dtype=torch.bool, device=device)
    for r in range(len(t)):
        obj = object_of(labels[int(t.image[r])], t, r, size, device)
        if obj is not None and obj.any():
            objects[r], known[r] = obj, True
    return objects, known


def pointing_tolerance(size) -> int:
    return round(15 * min(size) / 224)  # Zhang et al.'s 15 px at 224 px


def frame_mask(h: int, w: int, device) -> torch.Tensor:
    """The image's outer band (BORDER of each side), H x W bool."""
    bh, bw = max(1, round(BORDER * h)), max(1, round(BORDER * w))
    frame = torch.ones(h, w, dtype=torch.bool, device=device)
    frame[bh : h - bh, bw : w - bw] = False
    return frame


def localise(maps: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor] | None, size) -> Localisation | None:
    """Share of the map inside the ground-truth object and the pointing game, where objects are known
    (rows: row_objects')."""
    if rows is None or not rows[1].any():
        return None
    objects, known = rows
    tolerance = pointing_tolerance(size)
    energy = energy_in_object(maps[known], objects[known])
    hits = pointing_hits(maps[known], objects[known], tolerance)
    area = objects[known].flatten(1).float().mean(1)
    return Localisation(
        energy_in_object=float(energy.nanmean()),
        pointing_game=float(hits.float().mean()),
        object_area=float(area.mean()),
        objects=int(known.sum()),
        tolerance_px=tolerance,
    )


def localisation_findings(found: Localisation | None) -> list[Finding]:
    if found is None:
        return []
    return [
        Finding(
            "info" if found.energy_in_object >= 0.5 else "medium",
            f"{found.energy_in_object:.0%} of the map's mass lies inside the ground-truth object "
            f"(objects cover {found.object_area:.0%} of the image on average); the peak lands on the "
            f"object for {found.pointing_game:.0%} of {found.objects} objects (pointing game, "
            f"{found.tolerance_px} px tolerance)",
            key=True,
        )
    ]


# ---- against the frame ------------------------------------------------------------------------------------


def border_attention(maps: torch.Tensor, classes: torch.Tensor, names) -> Border:
    """Share of each map's mass in the image's outer band, overall and per explained class (worst first)."""
    frame = frame_mask(*maps.shape[-2:], maps.device)
    share = energy_in_object(maps, frame.expand_as(maps))
    rows = []
    for c in classes.unique().tolist():
        mine = share[(classes == c) & ~share.isnan()]
        if len(mine):
            rows.append(
                BorderClass(
                    name=str(names[c]) if c < len(names) else str(c), rows=len(mine), border_energy=float(mine.mean())
                )
            )
    rows.sort(key=lambda r: -r.border_energy)
    return Border(
        band=BORDER,
        area=float(frame.float().mean()),
        mean=float(share.nanmean()) if bool((~share.isnan()).any()) else None,  # None: no map has mass
        classes=rows,
    )


def border_findings(border: Border, method: str) -> list[Finding]:
    label = LABELS.get(method, method)
    band = f"the outer {border.band:.0%} of each side, {border.area:.0%} of the area"
    flagged = [r for r in border.classes if r.border_energy > BORDER_FLAG and r.rows >= BORDER_MIN_ROWS]
    if flagged:
        listed = "; ".join(f"'{r.name}' {r.border_energy:.0%} ({r.rows} maps)" for r in flagged[:4])
        return [
            Finding(
                "medium",
                f"the model attends to the image border for {len(flagged)} class"
                f"{'es' if len(flagged) > 1 else ''}: over half of the {label} mass lies in {band}: "
                f"{listed}. Check for frames, padding or background cues",
                key=True,
            )
        ]
    if border.mean is None:
        return []
    worst = border.classes[0] if border.classes else None
    most = f"; most: '{worst.name}' {worst.border_energy:.0%}" if worst else ""
    return [
        Finding(
            "info",
            f"the maps stay on the image's interior: {border.mean:.0%} of the {label} mass lies in {band}{most}",
        )
    ]
