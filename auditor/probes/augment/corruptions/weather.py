"""ImageNet-C's weather family: snow, frost (a seeded procedural texture), fog and brightness."""

from __future__ import annotations

import math

import torch

from auditor.probes.augment.corruptions.kernels import (
    Rng,
    clipped_zoom,
    grey,
    line_blur,
    plasma_fractal,
    to_uint8_levels,
)

# Published parameters, severity 1..5 (pixel values at 224 x 224).
SNOW = (
    (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
    (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
    (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
    (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
)
FROST = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))  # image weight, frost weight
FOG = ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))  # strength, fractal decay
BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)


def snow(x, s, rng, scale):
    loc, std, zoom, threshold, radius, sigma, blend = SNOW[s]
    b, _, h, w = x.shape
    layer = clipped_zoom(rng.normal((b, 1, h, w), loc, std), zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    layer = to_uint8_levels(layer)
    layer = line_blur(layer, radius * scale, sigma * scale, rng.uniform((b,), -135, -45))
    layer = to_uint8_levels(layer)
    x = blend * x + (1 - blend) * torch.maximum(x, grey(x) * 1.5 + 0.5)
    return x + layer + layer.flip(-2, -1)


def frost_texture(batch: int, h: int, w: int, rng: Rng, scale: float) -> torch.Tensor:
    """A seeded procedural frost layer, B x 3 x H x W in [0, 1]: bright needle-like crystals over an icy haze.

    Crystals are sparse seeds smeared along a few random directions (motion blur), grown
    densest where a low-frequency fractal is high, as frost grows from the pane's edges
    and scratches; tinted the pale blue of the reference's photographs and as bright on
    average (about 0.6), so that each severity degrades about as much as the reference's
    (mean |corrupted - clean| within 0.01 of it at severities 1 and 3 on 224 px photographs).
    """
    size = 1 << max(1, math.ceil(math.log2(max(h, w))))
    haze = plasma_fractal(batch, size, 1.6, rng)[:, None, :h, :w]
    seeds = (rng.uniform((batch, 1, h, w)) < 0.02 + 0.10 * haze).float()
    crystals = torch.zeros_like(haze)
    for _ in range(3):
        crystals += line_blur(seeds, 6 * max(scale, 0.25), 4 * max(scale, 0.25), rng.uniform((batch,), -180, 180))
    crystals = crystals / crystals.flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1, 1)
    ice = (0.3 + 0.4 * haze + 0.7 * crystals.clamp_min(0).sqrt()).clamp(0, 1)  # FFT round-off can dip below 0
    tint = torch.tensor((0.80, 0.88, 0.98), device=rng.device).view(1, 3, 1, 1)
    return ice * tint


def frost(x, s, rng, scale):
    weight_x, weight_frost = FROST[s]
    b, c, h, w = x.shape
    layer = frost_texture(b, h, w, rng, scale)
    if c == 1:
        layer = grey(layer)
    return weight_x * x + weight_frost * layer


def fog(x, s, rng, scale):
    strength, decay = FOG[s]
    b, _, h, w = x.shape
    size = 1 << max(1, math.ceil(math.log2(max(h, w))))  # 256 at 224 px, as the reference
    fractal = plasma_fractal(b, size, decay, rng)[:, None, :h, :w]
    peak = x.flatten(1).amax(1).view(-1, 1, 1, 1)
    return (x + strength * fractal) * peak / (peak + strength)


def brightness(x, s, rng, scale):
    # V of HSV raised by c with hue and saturation kept: every channel scales by V'/V (grey where V = 0)
    v = x.amax(1, keepdim=True)
    v_new = (v + BRIGHTNESS[s]).clamp(0, 1)
    return torch.where(v > 0, x * v_new / v.clamp_min(1e-12), v_new.expand_as(x))
