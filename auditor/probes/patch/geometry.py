"""Where a patch goes and how it is pasted: placements, tiles, and boxes.

Engine. ART's AdversarialPatchPyTorch pastes the patch image by image in a Python loop
(torchvision `perspective` and `affine` per sample, numpy random draws) and takes numpy in.
Measured on digits-cnn, 2 CPU cores, the same 30 Adam steps of 64 images with one 9 x 9 px
patch (best of 6 interleaved runs): ART 1.86 s, this loop 0.41 s, the model's own 30 forward
and backward passes 0.40 s. ART spends three quarters of its time pasting; this loop runs at
0.96 of the model's forward+backward, 4.5x ART. So the hot loop is the project's own: one
`affine_grid` + `grid_sample` pastes a patch on a whole batch, every scale's patch trains in
ONE forward and backward per step (training.py), and everything stays on ctx.device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ROTATION = 20.0  # degrees either way: a patch stuck on by hand, on an upright scene
SIDE_JITTER = (0.8, 1.2)  # training: the side varies by this factor, so the patch works at about its size
BOX_JITTER = 0.15  # detectors, training: the patch centre moves up to this share of the box from its centre


@dataclass
class Placement:
    """One copy of a patch on each row: centre (x, y) and side in input pixels, angle in radians.

    `extent` is the side, in pixels, of the square tile the copy is drawn into: large enough for
    the biggest copy at any angle, so that only those pixels are sampled and written.
    """

    centre: torch.Tensor  # R x 2
    side: torch.Tensor  # R
    angle: torch.Tensor  # R
    extent: int
    on: torch.Tensor | None = None  # R bool: the rows that get this copy (detectors: images with fewer objects)

    def take(self, rows) -> Placement:
        return Placement(
            self.centre[rows],
            self.side[rows],
            self.angle[rows],
            self.extent,
            None if self.on is None else self.on[rows],
        )


def tile_extent(largest_side: float) -> int:
    """A tile that holds a square of this side at any rotation (its diagonal), with a pixel to spare each way."""
    return math.ceil(largest_side * math.sqrt(2)) + 2


def paste(x: torch.Tensor, patch: torch.Tensor, where: Placement) -> tuple[torch.Tensor, torch.Tensor]:
    """x with one copy of the patch on every row, and the share of each pixel it covers (R x 1 x H x W)."""
    return patched(x, patch, [where])


def patched(x: torch.Tensor, patch: torch.Tensor, where: list[Placement]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every copy pasted in turn (detectors: one per object slot), and the coverage of all of them.

    Each copy touches only its tile: the images are flattened with one spare pixel at the end
    that takes whatever part of a tile falls outside the image, so a copy is one gather, a blend
    and one scatter of tile-sized tensors instead of whole-image operations.
    """
    n, c, h, w = x.shape
    flat = torch.cat([x.flatten(2), x.new_zeros(n, c, 1)], 2)
    cover = x.new_zeros(n, 1, h * w + 1)
    for copy in where:
        index, colour, share = _tile(patch, copy, (h, w))
        index_c = index.expand(-1, c, -1)
        current = flat.gather(2, index_c)
        flat = flat.scatter(2, index_c, current * (1 - share) + colour)
        cover = cover.scatter_reduce(2, index, share.detach(), "amax")  # geometry only: no gradient needed
    return flat[..., : h * w].reshape(n, c, h, w), cover[..., : h * w].reshape(n, 1, h, w)


def _tile(patch: torch.Tensor, where: Placement, size: tuple[int, int]):
    """(flat image index R x 1 x T², patch colour R x C x T² weighted by coverage, coverage R x 1 x T²) of each tile.

    The affine map takes each tile pixel to the patch's own coordinates (-1..1 inside it);
    sampling the patch and a plane of ones with zero padding gives the colours already weighted
    by coverage, so the edges blend and the gradient reaches every texel.
    """
    h, w = size
    t = where.extent
    n = len(where.side)
    origin = torch.floor(where.centre - t / 2)  # tile's top-left pixel, x and y
    cos, sin = torch.cos(where.angle), torch.sin(where.angle)
    k = 2 / where.side
    dx, dy = origin[:, 0] + t / 2 - where.centre[:, 0], origin[:, 1] + t / 2 - where.centre[:, 1]
    theta = torch.stack(
        [
            torch.stack([k * cos * t / 2, k * sin * t / 2, k * (cos * dx + sin * dy)], 1),
            torch.stack([-k * sin * t / 2, k * cos * t / 2, k * (cos * dy - sin * dx)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, [n, 1, t, t], align_corners=False)
    source = torch.cat([patch, torch.ones_like(patch[:1])]).expand(n, -1, -1, -1)
    sampled = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False).flatten(2)
    steps = torch.arange(t, device=origin.device)
    rows = origin[:, 1, None].long() + steps  # n x t
    cols = origin[:, 0, None].long() + steps
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    if where.on is not None:
        inside = inside & where.on[:, None, None]
    index = torch.where(inside, rows[:, :, None] * w + cols[:, None, :], h * w).flatten(1)[:, None]
    keep = inside.flatten(1)[:, None].to(sampled.dtype)
    return index, sampled[:, :-1] * keep, sampled[:, -1:] * keep


def draw(shape: tuple[int, ...], generator: torch.Generator, device) -> torch.Tensor:
    """Uniform draws from the generator, on its own device, moved to `device`: a CPU generator (the fixed
    evaluation draws) gives the same placements whichever device the images are on."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def anywhere(
    n: int, side: float, size: tuple[int, int], generator: torch.Generator, train: bool, device=None
) -> Placement:
    """A random place and rotation per row, the rotated patch kept inside the image where it fits."""
    device = generator.device if device is None else device
    u = draw((n, 4), generator, device)
    sides = torch.full((n,), float(side), device=device)
    if train:
        sides = sides * (SIDE_JITTER[0] + (SIDE_JITTER[1] - SIDE_JITTER[0]) * u[:, 0])
    angle = torch.deg2rad((2 * u[:, 1] - 1) * ROTATION)
    half = sides / 2 * (angle.cos().abs() + angle.sin().abs())  # half the rotated square's extent
    h, w = size
    lo_x, lo_y = half.clamp_max(w / 2), half.clamp_max(h / 2)
    centre = torch.stack([lo_x + (w - 2 * lo_x) * u[:, 2], lo_y + (h - 2 * lo_y) * u[:, 3]], 1)
    return Placement(centre, sides, angle, tile_extent(side * (SIDE_JITTER[1] if train else 1)))


@dataclass
class Objects:
    """Each image's objects, padded to M slots: boxes N x M x 4 (xyxy, input pixels), `valid` N x M."""

    boxes: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def padded(cls, reference: list[torch.Tensor], device) -> Objects:
        """From K x 5 (class, xyxy) references, one per image."""
        m = max([len(r) for r in reference] + [1])
        boxes = torch.zeros(len(reference), m, 4, device=device)
        valid = torch.zeros(len(reference), m, dtype=torch.bool, device=device)
        for i, r in enumerate(reference):
            boxes[i, : len(r)], valid[i, : len(r)] = r[:, 1:5], True
        return cls(boxes, valid)

    def take(self, rows) -> Objects:
        return Objects(self.boxes[rows], self.valid[rows])

    def areas(self) -> torch.Tensor:
        """The valid boxes' areas (one, a plain 1, when there are none)."""
        return box_area(self.boxes[self.valid]) if self.valid.any() else torch.ones(1)


def on_objects(objects: Objects, scale: float, extent: int, generator: torch.Generator, train: bool) -> list[Placement]:
    """One copy per object slot, centred on the object (moved a little while training); absent slots off.

    `extent`: the tiles' side, set by the largest box (read once by the caller, not at every step).
    """
    boxes, valid = objects.boxes, objects.valid
    size = boxes[..., 2:] - boxes[..., :2]
    u = draw((len(boxes), boxes.shape[1], 4), generator, boxes.device)
    sides = (scale * size[..., 0] * size[..., 1]).clamp_min(1).sqrt()
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    if train:
        sides = sides * (SIDE_JITTER[0] + (SIDE_JITTER[1] - SIDE_JITTER[0]) * u[..., 0])
        centre = centre + (2 * u[..., 2:] - 1) * BOX_JITTER * size
    angle = torch.deg2rad((2 * u[..., 1] - 1) * ROTATION)
    return [Placement(centre[:, j], sides[:, j], angle[:, j], extent, valid[:, j]) for j in range(boxes.shape[1])]


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp_min(0) * (boxes[..., 3] - boxes[..., 1]).clamp_min(0)


def pair_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of R x M boxes with R x A boxes (xyxy) -> R x M x A."""
    lo = torch.maximum(a[:, :, None, :2], b[:, None, :, :2])
    hi = torch.minimum(a[:, :, None, 2:], b[:, None, :, 2:])
    inter = (hi - lo).clamp_min(0).prod(-1)
    return inter / (box_area(a)[:, :, None] + box_area(b)[:, None, :] - inter).clamp_min(1e-9)
