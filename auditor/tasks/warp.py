"""Geometric shifts of images and of what they are labelled with, through the same affine maps.

An affine here is B x 3 x 3 and maps output pixel centres to input ones (what grid_sample
wants); the augment probe's geometric shifts build them, the tasks move their references
with them (masks nearest-neighbour, boxes around their moved corners).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def theta(a: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pixel-space maps -> affine_grid's normalised ones (align_corners=False)."""
    n = torch.tensor([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]], device=a.device, dtype=a.dtype)
    return (n @ a @ torch.linalg.inv(n))[:, :2]


def warp_images(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    grid = F.affine_grid(theta(a, h, w), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def warp_masks(masks: torch.Tensor, a: torch.Tensor, ignore: int = 255) -> torch.Tensor:
    """Class masks (B x H x W) through the same maps, nearest-neighbour; what comes from outside is `ignore`."""
    h, w = masks.shape[-2:]
    grid = F.affine_grid(theta(a.to(masks.device), h, w), [len(masks), 1, h, w], align_corners=False)
    shifted = masks[:, None].float() + 1  # 0 now means "outside the image"
    out = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0].long() - 1
    return torch.where(out < 0, torch.full_like(out, ignore), out).to(masks.dtype)


def warp_boxes(
    boxes: list[torch.Tensor], a: torch.Tensor, h: int, w: int, min_visible: float = 0.5
) -> list[torch.Tensor]:
    """K x 5 (class, x0, y0, x1, y1; pixel edges) per image, moved with the image.

    A rotated box is replaced by the axis-aligned box around its corners; a box cut by the
    border keeps its visible part, and is dropped when less than `min_visible` of it is left.
    """
    forward = torch.linalg.inv(a.double().cpu())
    out = []
    for k, t in enumerate(boxes):
        if len(t) == 0:
            out.append(t)
            continue
        x0, y0, x1, y1 = (t[:, i].double().cpu() for i in range(1, 5))
        corners = (
            torch.stack(
                [
                    torch.stack([x0, y0], -1),
                    torch.stack([x1, y0], -1),
                    torch.stack([x0, y1], -1),
                    torch.stack([x1, y1], -1),
                ],
                1,
            )
            - 0.5
        )  # K x 4 x 2
        moved = corners @ forward[k, :2, :2].T + forward[k, :2, 2] + 0.5
        lo, hi = moved.amin(1), moved.amax(1)
        clipped_lo = torch.stack([lo[:, 0].clamp(0, w), lo[:, 1].clamp(0, h)], -1)
        clipped_hi = torch.stack([hi[:, 0].clamp(0, w), hi[:, 1].clamp(0, h)], -1)
        area = (hi - lo).prod(1)
        visible = (clipped_hi - clipped_lo).clamp_min(0).prod(1)
        keep = visible >= min_visible * area.clamp_min(1e-9)
        moved_boxes = torch.cat([t[:, :1].double().cpu(), clipped_lo, clipped_hi], 1)[keep]
        out.append(moved_boxes.to(t.device, t.dtype))
    return out


# ---------------------------------------------------------------- photometric
