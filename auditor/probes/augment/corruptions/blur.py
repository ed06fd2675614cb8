"""ImageNet-C's blur family: defocus, glass, motion and zoom blur (spatial parameters scaled by `scale`)."""

from __future__ import annotations

import math

import torch

from auditor.probes.augment.corruptions.kernels import (
    clipped_zoom,
    filter2d,
    gaussian_1d,
    gaussian_blur,
    line_blur,
    separable,
    to_uint8_levels,
)

# Published parameters, severity 1..5 (pixel values at 224 x 224).
DEFOCUS_BLUR = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))  # disk radius, anti-alias sigma
GLASS_BLUR = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))  # sigma, max shift, iterations
MOTION_BLUR = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))  # radius, sigma
ZOOM_BLUR = ((1.0, 1.11, 0.01), (1.0, 1.16, 0.01), (1.0, 1.21, 0.02), (1.0, 1.26, 0.02), (1.0, 1.31, 0.03))


def defocus_kernel(radius: float, alias_sigma: float, device=None) -> torch.Tensor:
    """A normalised disk, anti-aliased by a small Gaussian (3 x 3 up to radius 8, else 5 x 5), as the reference."""
    small = radius <= 8
    if float(radius).is_integer():
        # the published radii: the reference's binary disk on its grid (17 x 17 up to radius 8,
        # where the anti-aliasing reflects at the grid's edge for radius 8, as OpenCV does there)
        half = 8 if small else int(radius)
        t = torch.arange(-half, half + 1, device=device, dtype=torch.float32)
        disk = ((t[:, None] ** 2 + t[None] ** 2) <= radius**2).float()
    else:
        half = math.ceil(radius) + 2
        t = torch.arange(-half, half + 1, device=device, dtype=torch.float32)
        # a scaled radius is fractional, where a binary disk jumps in whole-pixel steps (radius
        # 0.6 and 0.99 would both be one pixel): use the share of each pixel the disk covers
        sub = (torch.arange(16, device=device, dtype=torch.float32) + 0.5) / 16 - 0.5
        u = (t[:, None] + sub[None]).flatten()
        inside = ((u[:, None] ** 2 + u[None] ** 2) <= radius**2).float()
        disk = inside.view(len(t), 16, len(t), 16).mean((1, 3))
    disk = disk / disk.sum()
    k1 = gaussian_1d(alias_sigma, 1 if small else 2, device)
    return separable(disk[None, None], k1, k1, "reflect101")[0, 0]


def defocus_blur(x, s, rng, scale):
    radius, alias = DEFOCUS_BLUR[s]
    return filter2d(x, defocus_kernel(radius * scale, alias * scale, x.device))


def glass_blur(x, s, rng, scale):
    sigma, delta, iterations = GLASS_BLUR[s]
    sigma, delta = sigma * scale, max(1, int(round(delta * scale)))
    b, c, h, w = x.shape
    y = to_uint8_levels(gaussian_blur(x, sigma))
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    # the reference shuffles the interior only: rows and columns delta+1 .. size-delta
    interior = (rows > delta) & (rows <= h - delta) & (cols > delta) & (cols <= w - delta)
    for _ in range(iterations):
        dy = rng.integers((b, h, w), -delta, delta)
        dx = rng.integers((b, h, w), -delta, delta)
        r = torch.where(interior, rows + dy, rows).clamp(0, h - 1)
        q = torch.where(interior, cols + dx, cols).clamp(0, w - 1)
        source = (r * w + q).view(b, 1, h * w).expand(b, c, h * w)
        y = y.reshape(b, c, h * w).gather(2, source).view(b, c, h, w)
    return gaussian_blur(y, sigma)


def motion_blur(x, s, rng, scale):
    radius, sigma = MOTION_BLUR[s]
    return line_blur(x, radius * scale, sigma * scale, rng.uniform((len(x),), -45, 45))


def zoom_blur(x, s, rng, scale):
    start, stop, step = ZOOM_BLUR[s]
    factors = torch.arange(start, stop, step, dtype=torch.float64).tolist()
    out = x.clone()
    for f in factors:
        out += clipped_zoom(x, f)
    return out / (len(factors) + 1)
