"""ROAD: RemOve And Debias (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for
Attribution Methods"), beside deletion and insertion.

Deletion paints the removed pixels black, and the shape of the black holes alone tells the model
where the map pointed: the paper shows this leak reorders methods. ROAD fills the removed pixels by
noisy linear imputation instead: each removed pixel is the weighted mean of its eight neighbours
(1/6 each side, 1/12 each diagonal, the weights of neighbours off the image dropped), solved for all
removed pixels at once, plus Gaussian noise (std NOISE) so the filled region carries no telltale
smoothness. The model's score of the row is read as a growing share of pixels is removed, most
relevant first (MoRF: the score should fall fast, lower AUC is better) and least relevant first
(LeRF: it should hold, higher AUC is better).

Departures from the paper: the shares are the probe's deletion steps (0 to 100%, the paper stops at
90%; at 100% nothing is left to impute from, so the image is the noise alone), the score is the row's
probability as in deletion and insertion (the paper reads accuracy over a data set), and the noise is
added in pixel space, [0, 1] (the paper adds 0.01 to normalised inputs).

Why not scipy's sparse solver per image, as the paper's code does: thousands of systems per run
(maps x orders x steps x rows), each assembled and solved on the CPU one at a time. The system is a
graph Laplacian restricted to the removed pixels, symmetric and positive definite wherever a removed
region touches a kept pixel, so conjugate gradients solve it for a whole batch at once, one 3 x 3
stencil per iteration, on the model's device. A coarse-to-fine start (the same problem solved at half
the size, upsampled) cuts the iterations the large holes need from hundreds to tens. The first and last
steps are the same image for every map and order and are scored once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from auditor import distributed
from auditor.probes.gradcam.details import RoadAuc
from auditor.probes.gradcam.figures import LABELS
from auditor.results import Finding

NOISE = 0.01  # std of the noise added to each imputed pixel, in [0, 1] pixel units (the paper's 0.01)
# Conjugate gradients stop when every system's residual is TOLERANCE of its right-hand side, or after ITERATIONS
# per level of the coarse-to-fine cascade (which halves the image down to COARSEST px). Measured against scipy's
# direct solve on the zoo's 160 px shapes scenes with map-shaped holes of 25-90% of the image: mean error 3e-3
# to 7e-3, largest 2e-2, about the noise's own std; the ROAD AUCs of digits-cnn and shapes-unet stay within
# 0.01 of a solve ten times tighter (1e-4, 40 iterations), which costs 1.6x the time. Without the cascade,
# 40 iterations leave errors up to 0.5.
TOLERANCE, ITERATIONS, COARSEST = 1e-3, 20, 8


def _neighbours(x: torch.Tensor) -> torch.Tensor:
    """Weighted sum of each pixel's eight neighbours, 1/6 each side and 1/12 each diagonal (pixels off the
    image count as 0); x: M x 1 x H x W. Eight shifted adds: a 1-channel 3 x 3 conv2d is 6x slower on CPU."""
    h, w = x.shape[-2:]
    p = F.pad(x, (1, 1, 1, 1))
    sides = p[..., :h, 1 : w + 1] + p[..., 2:, 1 : w + 1] + p[..., 1 : h + 1, :w] + p[..., 1 : h + 1, 2:]
    corners = p[..., :h, :w] + p[..., :h, 2:] + p[..., 2:, :w] + p[..., 2:, 2:]
    return sides.div_(6).add_(corners, alpha=1 / 12)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """One inner product per image plane (each its own system), M x 1 x 1 x 1."""
    m = a.shape[0]
    return torch.bmm(a.reshape(m, 1, -1), b.reshape(m, -1, 1)).view(m, 1, 1, 1)


def conjugate_gradients(x: torch.Tensor, removed: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Solve, for the removed pixels u, deg(p) u_p - sum_q w_pq u_q = sum_q w_pq x_q over kept neighbours q:
    each removed pixel the weighted mean of its neighbours. x, removed (bool), start (the first guess):
    M x 1 x H x W, one plane per system. Returns x with the removed pixels filled."""
    hole = removed.to(x.dtype)
    kept = x * (1 - hole)
    degree = _neighbours(torch.ones_like(x[:1]))

    def apply(u: torch.Tensor) -> torch.Tensor:  # the system's matrix on the removed pixels
        return _neighbours(u).sub_(degree * u).mul_(hole).neg_()

    rhs = hole * _neighbours(kept)
    u = start * hole
    r = rhs - apply(u)
    p = r.clone()
    rr = _dot(r, r)
    goal = (TOLERANCE**2) * _dot(rhs, rhs).clamp_min(1e-20)
    for _ in range(ITERATIONS):
        if bool((rr <= goal).all()):
            break
        ap = apply(p)
        alpha = rr / _dot(p, ap).clamp_min(1e-20)
        u.addcmul_(alpha, p)
        r.addcmul_(alpha, ap, value=-1)
        rr_next = _dot(r, r)
        p.mul_(rr_next / rr.clamp_min(1e-20)).add_(r)
        rr = rr_next
    return kept.add_(u)


def linear_imputation(x: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """x (N x C x H x W) with its removed pixels (N x 1 x H x W bool) filled by the weighted mean of their
    neighbours, each channel on its own."""
    n, c, h, w = x.shape
    planes = x.reshape(n * c, 1, h, w)
    holes = removed.expand(n, c, h, w).reshape(n * c, 1, h, w)
    return _cascade(planes, holes).view(n, c, h, w)


def _cascade(x: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Coarse to fine: the half-size problem (each 2 x 2 block the mean of its kept pixels, removed where
    none is kept), solved the same way and upsampled, is the first guess."""
    h, w = x.shape[-2:]
    start = torch.zeros_like(x)
    if min(h, w) >= 2 * COARSEST and bool(removed.any()):
        kept = (~removed).to(x.dtype)
        share = F.avg_pool2d(kept, 2, ceil_mode=True)
        coarse = F.avg_pool2d(x * kept, 2, ceil_mode=True) / share.clamp_min(1e-12)
        filled = _cascade(coarse, share == 0)
        start = F.interpolate(filled, size=(h, w), mode="bilinear", align_corners=False)
    return conjugate_gradients(x, removed, start)


def noisy_linear_imputation(x: torch.Tensor, removed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """ROAD's imputation: the linear fill plus Gaussian noise (std NOISE) on the removed pixels."""
    filled = linear_imputation(x, removed)
    noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device, x.dtype)
    return filled + NOISE * noise * removed.to(x.dtype)


# ---- the curves -----------------------------------------------------------------------------------------

ORDERS = ("morf", "lerf")  # most relevant first, least relevant first


@torch.no_grad()
def road_curves(
    prob_fn,
    x: torch.Tensor,
    ranks: dict[str, torch.Tensor],
    steps: int,
    generator: torch.Generator,
    batch_size: int,
    progress: Callable[[int], object] = lambda n: None,
) -> dict[str, dict[str, torch.Tensor]]:
    """name -> {"morf": N x (steps+1), "lerf": N x (steps+1)}: each row's score as k/steps of its pixels are
    removed and imputed, in the order of `ranks` (each pixel's rank in its map, 0 the most relevant).

    Every (map, order, step, row) is one image; they go through the imputation and the model in batches of
    `batch_size`, whatever mix of maps and steps a batch holds. prob_fn(images, rows) scores those rows.
    The first step (nothing removed) and the last (nothing left: the noise alone) are the same for every
    map and order, and are scored once (road_jobs counts the jobs)."""
    n, _, h, w = x.shape
    names = list(ranks)
    order = torch.stack([ranks[m] for m in names]).to(x.device)  # maps x N x H x W
    counts = (torch.arange(steps + 1, device=x.device) * (h * w) / steps).round().long()
    ends = [(0, False, 0), (0, False, steps)]
    jobs = ends + [(m, least, k) for m in range(len(names)) for least in (False, True) for k in range(1, steps)]
    job_map, job_least, job_k = (torch.tensor(column, device=x.device) for column in zip(*jobs))
    total = len(jobs) * n
    # Each batch's noise is seeded from one draw of the generator and the batch's index: the batches are the work
    # a sharded run's ranks share (auditor.distributed), and a batch draws the same noise whichever rank runs it.
    base = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    noise = torch.Generator(device=generator.device)

    def batch_of(b: int) -> torch.Tensor:
        start = b * batch_size
        items = torch.arange(start, min(start + batch_size, total), device=x.device)
        j, r = items // n, items % n
        rank, count = order[job_map[j], r][:, None], counts[job_k[j]].view(-1, 1, 1, 1)
        removed = torch.where(job_least[j].view(-1, 1, 1, 1), rank >= h * w - count, rank < count)
        noise.manual_seed(base + b)
        scored = prob_fn(noisy_linear_imputation(x[r], removed, noise), r).float()
        progress(finishes(b))  # the jobs whose last row this batch scores
        return scored

    finishes = lambda b: min((b + 1) * batch_size, total) // n - (b * batch_size) // n  # noqa: E731
    scores = torch.cat(distributed.chunked(batch_of, -(-total // batch_size), progress, finishes))
    curves = scores.view(len(jobs), n)
    out = {m: {o: torch.empty(n, steps + 1, device=x.device) for o in ORDERS} for m in names}
    for m, o in ((m, o) for m in names for o in ORDERS):
        out[m][o][:, 0], out[m][o][:, steps] = curves[0], curves[1]
    for (m, least, k), row in zip(jobs[2:], curves[2:]):
        out[names[m]][ORDERS[least]][:, k] = row
    return out


def road_jobs(maps: int, steps: int) -> int:
    """How many (map, order, step) jobs road_curves scores, for a progress bar."""
    return 2 + 2 * maps * (steps - 1)


def road_findings(aucs: dict[str, RoadAuc], method: str, what: str, rows: int, margin: float) -> list[Finding]:
    """Whether `method`'s maps beat the random map under ROAD, in the words of deletion and insertion's finding."""
    label, mine, rand = LABELS[method], aucs[method], aucs["random"]
    numbers = f"MoRF AUC {mine.morf:.3f} vs random {rand.morf:.3f}, LeRF AUC {mine.lerf:.3f} vs random {rand.lerf:.3f}"
    morf, lerf = rand.morf - mine.morf >= margin, mine.lerf - rand.lerf >= margin
    if morf and lerf:
        return [
            Finding(
                "info",
                f"ROAD agrees (removed pixels imputed, Rong et al. 2022): removing {label}'s top pixels first "
                f"destroys {what} faster than a random map's, removing its least relevant first keeps it "
                f"longer ({numbers}, {rows} rows)",
            )
        ]
    if not morf and not lerf:
        return [
            Finding(
                "medium",
                f"ROAD does not confirm {label}: once the removed pixels are imputed rather than blacked out, "
                f"its order is no better than a random map's ({numbers}, {what}, {rows} rows); what deletion "
                "and insertion credit it with may come from the shape of the holes (Rong et al. 2022)",
                key=True,
            )
        ]
    return [
        Finding(
            "info",
            f"ROAD agrees only in part: {label} beats a random map when its "
            f"{'most' if morf else 'least'} relevant pixels are removed first, not the other way ({numbers})",
        )
    ]
