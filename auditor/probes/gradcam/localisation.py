"""Localisation: where the maps fall, against the ground truth and against the image frame.

The share of the map inside the object and the pointing game (Zhang et al. 2016) where
objects are known (boxes, masks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
