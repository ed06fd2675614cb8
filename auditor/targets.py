"""Targets: the rows a probe explains or attacks, each an image and a scalar of the model's output.

A row is a class of an image (classifiers), a box at the head's anchor that holds it
(detectors), a class's mask (segmenters), or a box and its mask (instance segmenters). `target_scores` turns a batch's output into
one differentiable scalar per row the same way for every task, so gradcam, patch and
attacks share one definition of "the score of this thing".
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from auditor.models.base import BOX_TARGETS


@dataclass
class Targets:
    """Rows: each an image of the batch and a target in it."""

    image: torch.Tensor  # R: index into the batch's images
    cls: torch.Tensor  # R: target class
    role: list[str]  # "predicted" / "true" (classify), "box" (detect), "mask" (segment), "instance", or a probe's own
    anchor: torch.Tensor | None = None  # boxes: the head's column that holds the box (R x 4: a proposal region)
    box: torch.Tensor | None = None  # boxes: R x 4 xyxy
    mask: torch.Tensor | None = None  # masks: R x H x W, the pixels whose class (instance: mask) logits are summed

    def __len__(self) -> int:
        return len(self.image)

    def take(self, rows) -> Targets:
        picked = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in picked.items():
            if isinstance(v, torch.Tensor):
                picked[k] = v[rows]
        picked["role"] = (
            [self.role[int(i)] for i in torch.as_tensor(rows).flatten().tolist()]
            if not isinstance(rows, slice)
            else self.role[rows]
        )
        return Targets(**picked)

    def twice(self) -> Targets:
        """The same rows for a batch of the images followed by another copy of them (clean, then changed)."""

        def both(v):
            return None if v is None else torch.cat([v, v])

        return Targets(
            image=torch.cat([self.image, self.image + len(self.image)]),
            cls=both(self.cls),
            role=self.role * 2,
            anchor=both(self.anchor),
            box=both(self.box),
            mask=both(self.mask),
        )

    def scores(self, adapter, out, probability: bool = False) -> torch.Tensor:
        """One score per row from the model's output on the batch: the row's class logit (or probability);
        for a mask the logits summed over it (the probability averaged); for a box its class score at
        its anchor, as a logit (or probability); for an instance (a box with a mask) its mask logits summed over
        the mask (its mask probability averaged there)."""
        if self.anchor is not None and self.mask is not None:
            return adapter.instance_scores(out, self.anchor, self.mask, probability)
        if self.anchor is not None:
            score = adapter.anchor_scores(out, self.anchor, self.cls)
            # The gradient of a saturated sigmoid vanishes (maps peak at 1e-4); its logit's does not.
            return score if probability else torch.logit(score, eps=1e-6)
        rows = torch.arange(out.shape[0], device=out.device)
        values = out.softmax(dim=1) if probability else out
        if self.mask is None:
            return values[rows, self.cls]
        mask = self.mask.float()
        total = (values[rows, self.cls] * mask).flatten(1).sum(1)
        return total / mask.flatten(1).sum(1).clamp_min(1) if probability else total


def target_scores(adapter, x: torch.Tensor, t: Targets, probability: bool = False) -> torch.Tensor:
    """One score per row of `t` for pixel-space batch x (row i is image i of x)."""
    return t.scores(adapter, adapter(x), probability)


def class_targets(classes: torch.Tensor, role: str = "patched") -> Targets:
    """Row i: class classes[i] of image i."""
    rows = torch.arange(len(classes), device=classes.device)
    return Targets(image=rows, cls=classes, role=[role] * len(classes))


def mask_targets(clean: torch.Tensor, under: torch.Tensor) -> Targets:
    """Row i: image i's most common class outside `under` (background only if nothing else), over its clean mask."""
    outside = clean.masked_fill(under, -1)
    counts = torch.stack([(outside == c).flatten(1).sum(1) for c in range(int(clean.max()) + 1)], 1)
    foreground = counts.clone()
    foreground[:, 0] = 0
    cls = torch.where(foreground.amax(1) > 0, foreground.argmax(1), counts.argmax(1))
    return Targets(
        image=torch.arange(len(clean), device=clean.device),
        cls=cls,
        role=["mask"] * len(clean),
        mask=outside == cls[:, None, None],
    )


def best_box_targets(adapter, x: torch.Tensor) -> Targets | None:
    """Row i: image i's most confident clean detection (its anchor and class); None if an image has none."""
    if not adapter.supports(BOX_TARGETS):
        return None
    with torch.no_grad():
        found = adapter.detect_with_anchors(adapter(x))
    if any(len(d["scores"]) == 0 for d, _ in found):
        return None
    best = [int(d["scores"].argmax()) for d, _ in found]
    return Targets(
        image=torch.arange(len(x), device=x.device),
        cls=torch.stack([d["labels"][b] for (d, _), b in zip(found, best)]),
        role=["box"] * len(x),
        anchor=torch.stack([a[b] for (_, a), b in zip(found, best)]),
        box=torch.stack([d["boxes"][b] for (d, _), b in zip(found, best)]),
    )


# ---- batches of rows (gradcam, patch), and rows spread over images (gradcam) --------------------------------------------------


def chunks(n: int, size: int) -> list[slice]:
    """Slices of at most `size` over range(n): the batches rows go through the model in."""
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def round_robin(image: list[int]) -> list[int]:
    """Row positions ordered so that each image gives one row before any gives a second."""
    seen: dict[int, int] = {}
    keyed = []
    for pos, i in enumerate(image):
        keyed.append((seen.get(i, 0), pos))
        seen[i] = seen.get(i, 0) + 1
    return [pos for _, pos in sorted(keyed)]
