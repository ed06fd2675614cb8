"""The Square attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box adversarial attack
via random search"), L-inf, batched on the device for any per-image score.

Gradient-free: it only evaluates the model. It starts from vertical stripes of ±ε, then each query
redraws one random square window of the perturbation (per image and per channel ±ε) and keeps it
where the score improves. The window's share of the image starts at p_init = 0.8 and halves on the
paper's schedule (iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10,000, scaled to the
budget). Because it never reads a gradient, a model that hides its gradients (a quantised or
JPEG-compressed input, a layer with a zero backward) does not hide from it.

Why our own: ART's SquareAttack needs a classifier (detectors and segmenters get none) and loops
through numpy; torchattacks' draws one window position for the whole batch. Here every image has its
own window each query and leaves as soon as it is broken.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

P_INIT = 0.8
# the paper's schedule: at these iterations (of 10,000) the window's share of the image halves again
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)

ScoreFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def window_share(i: int, queries: int, p_init: float = P_INIT) -> float:
    """The share of the image the i-th query's window covers."""
    at = int(i / max(queries, 1) * 10_000)
    return p_init / 2 ** sum(at > h for h in HALVINGS)


def square_linf(
    score_fn: ScoreFn,
    x: torch.Tensor,
    eps: torch.Tensor,
    queries: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random search in the L-inf ball: (adversarial images, success per image, the query at which each
    succeeded, -1 where it did not).

    score_fn(x_rows, rows) -> (per-image score to minimise, per-image success): `rows` index the batch's
    images that x_rows holds. A success leaves at once; the others spend every query.
    """
    n, c, h, w = x.shape
    x = x.detach()
    e = (eps.to(x.device, x.dtype).expand(n) if eps.dim() == 0 else eps.to(x.device, x.dtype)).reshape(n, 1, 1, 1)
    stripes = torch.randint(0, 2, (n, c, 1, w), generator=generator, device=x.device).to(x.dtype) * 2 - 1
    delta = (e * stripes).expand(n, c, h, w).clone()
    adv = (x + delta).clamp(0, 1)
    rows = torch.arange(n, device=x.device)
    with torch.no_grad():
        score, success = score_fn(adv, rows)
    success = success.clone()
    found_at = torch.where(success, 0, -1)
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    for i in range(1, queries):
        idx = torch.nonzero(~success).flatten()
        if len(idx) == 0:
            break
        m = len(idx)
        side = min(max(round(math.sqrt(window_share(i, queries) * h * w)), 1), min(h, w) - 1 or 1)
        top = torch.randint(0, h - side + 1, (m,), generator=generator, device=x.device)
        left = torch.randint(0, w - side + 1, (m,), generator=generator, device=x.device)
        inside = ((ys[None] >= top[:, None]) & (ys[None] < top[:, None] + side))[:, None, :, None] & (
            (xs[None] >= left[:, None]) & (xs[None] < left[:, None] + side)
        )[:, None, None, :]
        sign = torch.randint(0, 2, (m, c, 1, 1), generator=generator, device=x.device).to(x.dtype) * 2 - 1
        base, xi, ei = delta[idx], x[idx], e[idx]
        cand = torch.where(inside, ei * sign, base)
        # a window that changes nothing (the same signs, or pixels clipped at 0 or 1) wastes the query: flip it
        still = ((xi + cand).clamp(0, 1) - adv[idx]).abs().flatten(1).sum(1) < 1e-9
        cand = torch.where(inside & still[:, None, None, None], -ei * sign, cand)
        trial = (xi + cand).clamp(0, 1)
        with torch.no_grad():
            s, hit = score_fn(trial, idx)
        better = s < score[idx]
        rows_b = idx[better]
        delta[rows_b], adv[rows_b], score[rows_b] = cand[better], trial[better], s[better]
        won = idx[hit & better]
        success[won] = True
        found_at[won] = i
    return adv, success, found_at
