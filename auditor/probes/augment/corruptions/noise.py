"""ImageNet-C's noise family: Gaussian, shot (Poisson) and impulse (salt and pepper) noise."""

from __future__ import annotations

import torch

# Published parameters, severity 1..5.
GAUSSIAN_NOISE = (0.08, 0.12, 0.18, 0.26, 0.38)
SHOT_NOISE = (60, 25, 12, 5, 3)
IMPULSE_NOISE = (0.03, 0.06, 0.09, 0.17, 0.27)


def gaussian_noise(x, s, rng, scale):
    return x + rng.normal(x.shape, std=GAUSSIAN_NOISE[s])


def shot_noise(x, s, rng, scale):
    c = SHOT_NOISE[s]
    return rng.poisson(x * c) / c


def impulse_noise(x, s, rng, scale):
    # skimage's salt & pepper: each value is replaced with probability `amount`, half by 1, half by 0
    hit = rng.uniform(x.shape) < IMPULSE_NOISE[s]
    salt = (rng.uniform(x.shape) < 0.5).to(x.dtype)
    return torch.where(hit, salt, x)
