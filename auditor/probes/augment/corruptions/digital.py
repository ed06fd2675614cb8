"""ImageNet-C's digital family: contrast, elastic transform, pixelate and JPEG compression."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from auditor.probes.augment.corruptions.kernels import box_resize, gaussian_1d, sample, separable

# Published parameters, severity 1..5 (pixel values at 224 x 224).
CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
ELASTIC = (
    (244 * 2, 244 * 0.7, 244 * 0.1),
    (244 * 2, 244 * 0.08, 244 * 0.2),
    (244 * 0.05, 244 * 0.01, 244 * 0.02),
    (244 * 0.07, 244 * 0.01, 244 * 0.02),
    (244 * 0.12, 244 * 0.01, 244 * 0.02),
)  # alpha, sigma, affine
PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)
JPEG_QUALITY = (25, 18, 15, 10, 7)


def contrast(x, s, rng, scale):
    mean = x.mean((-2, -1), keepdim=True)
    return (x - mean) * CONTRAST[s] + mean


def elastic_transform(x, s, rng, scale):
    alpha, sigma, affine = (v * scale for v in ELASTIC[s])
    b, _, h, w = x.shape
    dev = x.device
    # random affine: three points around the centre moved by up to `affine` pixels
    cx, cy, sq = w // 2, h // 2, min(h, w) // 3
    src = torch.tensor([[cx + sq, cy + sq], [cx + sq, cy - sq], [cx - sq, cy - sq]], device=dev, dtype=torch.float32)
    dst = src[None] + rng.uniform((b, 3, 2), -affine, affine)
    ones = torch.ones(b, 3, 1, device=dev)
    # dst -> src (the inverse warp), solved per image from the three pairs
    inverse = torch.linalg.solve(torch.cat([dst, ones], 2), src[None].expand(b, 3, 2))  # B x 3 x 2
    ys, xs = torch.meshgrid(
        torch.arange(h, device=dev, dtype=torch.float32),
        torch.arange(w, device=dev, dtype=torch.float32),
        indexing="ij",
    )
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, h * w, 3)
    srcs = (pts @ inverse).view(b, h, w, 2)
    x = sample(x, srcs[..., 0], srcs[..., 1], centres_reflect=True)
    # smooth random displacement fields (Simard et al. 2003)
    fields = rng.uniform((b, 2, h, w), -1, 1)
    radius = int(3 * sigma + 0.5)
    if radius > 0:
        k = gaussian_1d(sigma, radius, dev)
        fields = separable(fields, k, k, "symmetric")
    fields = fields * alpha
    return sample(x, xs + fields[:, 0], ys + fields[:, 1], centres_reflect=False)


def pixelate(x, s, rng, scale):
    h, w = x.shape[-2:]
    c = PIXELATE[s]
    small = box_resize(x, max(1, int(h * c)), max(1, int(w * c)))
    return box_resize(small, h, w)


def jpeg_compression(x, s, rng, scale):
    # Pillow's libjpeg, the reference's own encoder, one image at a time on the CPU: there is no
    # batched JPEG codec on the CPU, and torchvision's encode_jpeg is deprecated since 0.29
    quality = JPEG_QUALITY[s]
    arrays = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for a in arrays:
        buffer = io.BytesIO()
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(buffer, "JPEG", quality=quality)
        decoded = np.asarray(Image.open(buffer))
        out.append(torch.from_numpy(decoded.reshape(a.shape).copy()))
    return torch.stack(out).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255
