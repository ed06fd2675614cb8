"""YOLO txt label files, as ultralytics writes them: a line per object, normalised to the image.

A detection line is `class cx cy w h`; a segmentation line (YOLO-seg) is `class x1 y1 x2 y2 ...`, the object's
polygon, and its box is the polygon's extent. Polygons also give instance masks, drawn at a quarter of the input
size (ultralytics' own polygon2mask): its mask_ratio, the grid its -seg heads' prototypes and its validator's
masks live on.
"""

from __future__ import annotations

from pathlib import Path

import torch

from auditor.errors import AuditError

MASK_RATIO = 4  # input pixels per mask cell (ultralytics' mask_ratio)
FORMAT = "class cx cy w h, or class x1 y1 x2 y2 ... for a polygon, per line"


def read_yolo_labels(
    path: Path, size, class_map: dict[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(K x 5 boxes: class, x0, y0, x1, y1 in input pixels; K x H/4 x W/4 bool masks where every line is a
    polygon, else None). No file, or an empty one: no objects (and no masks, K = 0)."""
    h, w = (int(v) for v in size)
    grid = (max(1, h // MASK_RATIO), max(1, w // MASK_RATIO))
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    try:
        rows = [[float(v) for v in line] for line in lines]
    except ValueError as exc:
        raise AuditError(f"{path}: not a YOLO label file ({FORMAT}): {exc}") from exc
    if not rows:
        return torch.zeros(0, 5), torch.zeros(0, *grid, dtype=torch.bool)
    if any(len(r) != 5 and (len(r) < 7 or len(r) % 2 == 0) for r in rows):
        raise AuditError(f"{path}: not a YOLO label file ({FORMAT})")
    cls = torch.tensor([r[0] for r in rows])
    if class_map is not None:
        bad = [int(c) for c in cls.tolist() if int(c) not in class_map]
        if bad:
            raise AuditError(f"{path}: class id {bad[0]} is not in the data set's `names`")
        cls = torch.tensor([float(class_map[int(c)]) for c in cls.tolist()])
    boxes, masks = [], []
    for r in rows:
        if len(r) == 5:
            cx, cy, bw, bh = r[1] * w, r[2] * h, r[3] * w, r[4] * h
            boxes.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
            continue
        xs, ys = torch.tensor(r[1::2]), torch.tensor(r[2::2])
        boxes.append([float(xs.min()) * w, float(ys.min()) * h, float(xs.max()) * w, float(ys.max()) * h])
        masks.append(_polygon_mask(xs, ys, (h, w)))
    found = torch.cat([cls[:, None], torch.tensor(boxes, dtype=torch.float32)], 1)
    return found, torch.stack(masks) if len(masks) == len(rows) else None


def _polygon_mask(xs: torch.Tensor, ys: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A polygon (normalised) as ultralytics' loader draws it: filled at the input size (in pixels), then resized
    to the mask grid (ultralytics.data.utils.polygon2mask)."""
    from auditor.models.ultralytics import quiet_ultralytics

    quiet_ultralytics()
    from ultralytics.data.utils import polygon2mask

    h, w = size
    points = torch.stack([xs * w, ys * h], 1).flatten().numpy()
    return torch.from_numpy(polygon2mask((h, w), [points], downsample_ratio=MASK_RATIO) > 0)
