"""Location shortcuts: a class whose maps sit on the same small place whatever the image shows.

A model that reads a watermark, a corner tag or a fixed background patch instead of the object
(Lapuschkin et al. 2019, "Unmasking Clever Hans predictors") explains every image of that class with
the same place. Per explained class: the window, a quarter of each side (1/16 of the image), that holds
most of the class's mean map (each map scaled to sum 1 first); then three tests, all needed to flag it:

- consistent: more than MOST of the class's maps put at least LIFT times an even spread's share of
  their mass in that window (4/16 = 25%), so the place is the same whatever the image;
- its own: the other explained classes' maps put at most 1/CONTRAST as much of their mass there. A
  place every class looks at (a data set whose objects are always centred, as the zoo's digits are)
  is the data's layout, not one class's shortcut. Without other classes this cannot be told, and
  nothing is flagged unless ground truth stands in for it;
- off the object: where ground-truth objects are known (boxes, masks), less than ON_OBJECT of the
  class's map mass in the window lies on its own objects (matched rows only). Maps that follow an
  object which happens to stand at the same place are looking at the object. On the zoo's shapes:
  the segmenter's classes put 100% of their window's mass on their shapes, the detector's 23-25%
  (its maps are loose: 19% of their mass on the box overall); a tag away from the objects, about 0.

The thresholds, measured with Grad-CAM on the planted-mark test model (tests/planted_shortcut.py: a
4 px mark on shifted 28 px digits, maps read at 7 x 7), five training seeds, on the test's 40 images (10
of the marked class) and on 64 drawn at random: every map of the marked class holds at least 35% of its
mass in the window at the mark (mean 36-42%), the other classes' maps 3-5%: a contrast of 6.4-13.5.
The same network trained without the mark reaches 4.5 at most, at a class's most distinctive place (a
stroke the shifted digits keep near one place); the zoo's digits-cnn 1.3-1.8. Why not "half the mass in
1/16 of the image": a map read from a coarse layer cannot hold that much in so small a place, since a
feature lights up the cells around it too (the marked class's maps put 92-97% of their mass in the 3 x 3
cells around the mark).

This generalises `border_energy`, which asks the same question of one fixed place (the outer band).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from auditor.probes.gradcam.details import Shortcut, Shortcuts
from auditor.probes.gradcam.figures import LABELS
from auditor.results import Finding

WINDOW = 0.25  # the window's share of each side (1/16 of the area)
LIFT, MOST, CONTRAST, ON_OBJECT, MIN_ROWS = 4.0, 0.5, 6.0, 0.1, 3

# The image in thirds: which third the window's centre falls in names the place.
PLACES = {
    ("top", "left"): "top-left corner",
    ("top", "centre"): "top centre",
    ("top", "right"): "top-right corner",
    ("middle", "left"): "left side",
    ("middle", "centre"): "centre",
    ("middle", "right"): "right side",
    ("bottom", "left"): "bottom-left corner",
    ("bottom", "centre"): "bottom centre",
    ("bottom", "right"): "bottom-right corner",
}


def place_name(box: tuple[int, int, int, int], size: tuple[int, int]) -> str:
    """xyxy pixel box (x1, y1 exclusive) -> where it lies in the image, in words."""
    x0, y0, x1, y1 = box
    h, w = size

    def third(centre: float, side: int, names: tuple[str, str, str]) -> str:
        return names[min(2, int(3 * centre / side))]

    return PLACES[
        (third((y0 + y1) / 2, h, ("top", "middle", "bottom")), third((x0 + x1) / 2, w, ("left", "centre", "right")))
    ]


def window_shares(maps: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """Each (sum-1) map's mass inside the xyxy box."""
    x0, y0, x1, y1 = box
    return maps[:, y0:y1, x0:x1].flatten(1).sum(1)


def on_object(maps: torch.Tensor, objects: torch.Tensor, box: tuple[int, int, int, int]) -> float | None:
    """The share of the maps' mass inside the box that lies on their objects (None: no mass there)."""
    there = window_shares(maps, box).sum()
    if there <= 0:
        return None
    return float(window_shares(maps * objects, box).sum() / there)


def location_shortcuts(
    maps: torch.Tensor,
    classes: torch.Tensor,
    names,
    objects: torch.Tensor | None = None,
    known: torch.Tensor | None = None,
) -> Shortcuts:
    """Per explained class (MIN_ROWS maps or more): its window and the three tests; flagged classes first.

    maps: rows x H x W, non-negative; objects, known: each row's ground-truth object mask (rows x H x W)
    and whether it has one, where the task has ground truth."""
    h, w = maps.shape[-2:]
    kh, kw = max(1, round(WINDOW * h)), max(1, round(WINDOW * w))
    enough = LIFT * (kh * kw) / (h * w)  # the share a map must hold to concentrate there
    total = maps.flatten(1).sum(1)
    live = total > 0
    unit = maps[live] / total[live].view(-1, 1, 1)
    cls = classes[live]
    obj = objects[live] if objects is not None else None
    has = known[live] if known is not None else torch.zeros(len(unit), dtype=torch.bool, device=maps.device)
    found = []
    for c in cls.unique().tolist():
        mine = cls == c
        if int(mine.sum()) < MIN_ROWS:
            continue
        mass = F.avg_pool2d(unit[mine].mean(0)[None, None], (kh, kw), stride=1)[0, 0]
        y0, x0 = divmod(int(mass.flatten().argmax()), mass.shape[1])
        box = (x0, y0, x0 + kw, y0 + kh)
        share = window_shares(unit[mine], box)
        others = window_shares(unit[~mine], box) if (~mine).any() else None
        on = on_object(unit[has & mine], obj[has & mine], box) if obj is not None and (has & mine).any() else None
        found.append(
            Shortcut(
                name=str(names[c]) if c < len(names) else str(c),
                index=c,
                rows=int(mine.sum()),
                box=box,
                place=place_name(box, (h, w)),
                concentrated=float((share >= enough).float().mean()),
                mass=float(share.mean()),
                others=float(others.mean()) if others is not None else None,
                on_object=on,
            )
        )
    for s in found:
        s.flagged = is_shortcut(s)
    found.sort(key=lambda s: (not s.flagged, -(s.contrast or 0.0), -s.mass))
    return Shortcuts(window=(kh * kw) / (h * w), size=(h, w), classes=found, enough=enough, contrast=CONTRAST)


def is_shortcut(s: Shortcut) -> bool:
    if s.concentrated <= MOST:
        return False
    if s.others is None and s.on_object is None:  # nothing to tell the class's place from the data's
        return False
    apart = s.contrast is None or s.contrast >= CONTRAST
    off = s.on_object is None or s.on_object < ON_OBJECT
    return apart and off


def where(s: Shortcut, size: tuple[int, int]) -> str:
    x0, y0, x1, y1 = s.box
    return f"the {s.place} (pixels x {x0}-{x1 - 1}, y {y0}-{y1 - 1} of {size[1]}x{size[0]})"


def shortcut_findings(found: Shortcuts, method: str) -> list[Finding]:
    label = LABELS.get(method, method)
    flagged = [s for s in found.classes if s.flagged]
    findings = []
    for s in flagged:
        others = (
            f"; other classes' maps put {s.others:.0%} there (contrast {s.contrast:.1f})"
            if s.others is not None
            else ""
        )
        outside = (
            f"; {s.on_object:.0%} of the mass there lies on the class's objects" if s.on_object is not None else ""
        )
        findings.append(
            Finding(
                "high",
                f"location shortcut: class '{s.name}' is explained by {where(s, found.size)} whatever the image: "
                f"{s.concentrated:.0%} of its {s.rows} {label} maps put at least {found.enough:.0%} of their mass in "
                f"that {found.window:.0%} of the image (mean {s.mass:.0%}){others}{outside}. The model may read a "
                "mark, tag or "
                "background there rather than the object",
                key=True,
            )
        )
    if flagged or not found.classes:
        return findings
    top = found.classes[0]
    others = (
        f", other classes' {top.others:.0%} (contrast {top.contrast:.1f}; {CONTRAST:g} flags)"
        if top.contrast is not None
        else ""
    )
    return [
        Finding(
            "info",
            f"no location shortcut: no class's {label} maps keep to a place of their own; the most distinctive, "
            f"'{top.name}', put {top.mass:.0%} of their mass in {where(top, found.size)}{others}",
        )
    ]
