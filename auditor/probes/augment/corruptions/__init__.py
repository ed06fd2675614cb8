"""The 15 ImageNet-C corruptions (Hendrycks & Dietterich 2019) as batched torch operations.

`corrupt(x, name, severity, generator)` takes a batch B x C x H x W in [0, 1] (C = 1 or 3)
on any device and returns the corrupted batch, same shape, in [0, 1]. The parameters per
severity are the published ones (the `imagenet_c` package of the paper's authors). They
are given in pixels of a 224 x 224 image; `scale` (default: min(H, W) / 224) stretches the
spatial ones (blur radii, displacements) so that "severity 3" means the same relative
degradation at any resolution, and equals the published definition at 224 px.

Written here rather than taken from a package: the reference `imagecorruptions` works on
one numpy image at a time (its glass blur is a Python loop over every pixel), and no
longer imports with current scikit-image. Departures from the reference, all for batching:
glass blur displaces every pixel by an independent random offset in one gather instead of
swapping pixels one at a time in scan order; motion blur is a sum of shifted copies with
half-Gaussian weights (the kernel ImageMagick uses), as in `imagecorruptions`; a defocus
radius made fractional by scaling uses the disk's pixel coverage; frost uses
a seeded procedural ice texture instead of the six photographs the reference ships.
elastic_transform follows the script that made ImageNet-C (a random affine, then a smooth
displacement field); `imagecorruptions` 1.1.2 redefined it, weaker and without the affine.
"""

from __future__ import annotations

import torch

from auditor.probes.augment.corruptions import blur, digital, noise, weather
from auditor.probes.augment.corruptions.kernels import Rng

CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
FAMILIES = {
    "noise": CORRUPTIONS[0:3],
    "blur": CORRUPTIONS[3:7],
    "weather": CORRUPTIONS[7:11],
    "digital": CORRUPTIONS[11:15],
}
REFERENCE_SIZE = 224


def corrupt(
    x: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None, scale: float | None = None
) -> torch.Tensor:
    """`name` at `severity` (1..5) applied to every image of the batch x (B x C x H x W in [0, 1])."""
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r} (known: {', '.join(CORRUPTIONS)})")
    if not 1 <= int(severity) <= 5:
        raise ValueError(f"severity must be 1..5, got {severity}")
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected a batch B x C x H x W with C = 1 or 3, got shape {tuple(x.shape)}")
    if scale is None:
        scale = min(x.shape[-2:]) / REFERENCE_SIZE
    rng = Rng(generator, x.device)
    out = _FUNCTIONS[name](x.float(), int(severity) - 1, rng, float(scale))
    return out.clamp(0, 1)


# The registry of the 15: name -> (x, severity index 0..4, Rng, scale) -> x, in ImageNet-C's order.
_FUNCTIONS = {
    "gaussian_noise": noise.gaussian_noise,
    "shot_noise": noise.shot_noise,
    "impulse_noise": noise.impulse_noise,
    "defocus_blur": blur.defocus_blur,
    "glass_blur": blur.glass_blur,
    "motion_blur": blur.motion_blur,
    "zoom_blur": blur.zoom_blur,
    "snow": weather.snow,
    "frost": weather.frost,
    "fog": weather.fog,
    "brightness": weather.brightness,
    "contrast": digital.contrast,
    "elastic_transform": digital.elastic_transform,
    "pixelate": digital.pixelate,
    "jpeg_compression": digital.jpeg_compression,
}
