"""The checks that say whether to trust a class activation map (the maps: auditor.cam).

Checks: deletion and insertion curves (Petsiuk et al. 2018) beside a random and an edge
(Sobel) map; cascading weight randomisation (Adebayo et al. 2018); the share of the map
inside the object and the pointing game (Zhang et al. 2016) where objects are known.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from auditor.cam import ScoreFn, normalise, upsample

# ---- baselines -------------------------------------------------------------------------------------


def random_maps(n: int, coarse: tuple[int, int], size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Uniform noise as coarse as the CAM itself, upsampled: chance with the same granularity."""
    noise = torch.rand(n, *coarse, generator=generator, device=generator.device)
    return upsample(noise, size)


def sobel_maps(x: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude of the grey image: the "it just finds edges" baseline."""
    grey = x.mean(dim=1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
    kernels = torch.stack([kx, kx.t()])[:, None]
    g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels)
    return g.pow(2).sum(dim=1).sqrt()


# ---- faithfulness ----------------------------------------------------------------------------------


def blur_for_insertion(x: torch.Tensor) -> torch.Tensor:
    """The insertion canvas: a Gaussian blur with sigma a tenth of the image side.

    Petsiuk et al. blur with sigma 5 at 224 px; on 28 px digits that leaves the digit
    readable, so sigma scales with the image (22 px at 224) to remove the content at any size.
    """
    from torchvision.transforms.v2.functional import gaussian_blur

    sigma = max(min(x.shape[-2:]) / 10, 0.5)
    kernel = min(2 * math.ceil(3 * sigma) + 1, 2 * (min(x.shape[-2:]) // 2) - 1)
    return gaussian_blur(x, [kernel, kernel], [sigma, sigma])


def pixel_order(maps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each pixel's rank in its map, highest first; ties (the zeros a ReLU leaves) in seeded random order."""
    n = maps.shape[0]
    flat = maps.flatten(1).float()
    jitter = torch.rand(flat.shape, generator=generator, device=generator.device).to(flat.device)
    # Scaled below the smallest gap between distinct values, so jitter orders ties only.
    key = normalise(flat.view(n, 1, -1)).view(n, -1) + 1e-6 * jitter
    order = key.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand(n, -1))
    return ranks.view_as(maps)


@torch.no_grad()
def deletion_insertion(
    prob_fn: ScoreFn,
    x: torch.Tensor,
    maps: dict[str, torch.Tensor],
    steps: int,
    generator: torch.Generator,
    batch_size: int,
    progress: Callable[[int], None] = lambda n: None,
) -> dict[str, dict[str, torch.Tensor]]:
    """name -> {"deletion": N x (steps+1), "insertion": N x (steps+1)} curves of each row's score.

    Deletion sets the top-ranked pixels to 0 (black), insertion reveals them on the blurred
    canvas, in `steps` equal shares of the image. All maps and steps go through the model
    in batches of `batch_size` rows.
    """
    n, _, h, w = x.shape
    canvas = blur_for_insertion(x)
    fractions = torch.arange(steps + 1, device=x.device) / steps
    counts = (fractions * h * w).round().long()
    jobs = []  # (map name, mode, step)
    ranks = {name: pixel_order(m, generator).to(x.device) for name, m in maps.items()}
    for name in maps:
        for mode in ("deletion", "insertion"):
            jobs.extend((name, mode, k) for k in range(steps + 1))
    scores = torch.empty(len(jobs), n, device=x.device)

    def image(job, rows):
        name, mode, k = job
        chosen = (ranks[name][rows] < counts[k])[:, None]  # N x 1 x H x W: pixels removed / revealed so far
        if mode == "deletion":
            return torch.where(chosen, torch.zeros_like(x[rows]), x[rows])
        return torch.where(chosen, x[rows], canvas[rows])

    rows_per_job = max(1, batch_size // max(1, n))
    all_rows = torch.arange(n, device=x.device)
    if rows_per_job > 1:  # several whole jobs in one batch
        for start in range(0, len(jobs), rows_per_job):
            group = jobs[start : start + rows_per_job]
            batch = torch.cat([image(j, all_rows) for j in group])
            scores[start : start + len(group)] = prob_fn_rows(prob_fn, batch, n).view(len(group), n)
            progress(len(group))
    else:  # one job in several batches
        for j, job in enumerate(jobs):
            for start in range(0, n, batch_size):
                rows = all_rows[start : start + batch_size]
                scores[j, rows] = prob_fn_rows(prob_fn, image(job, rows), len(rows), rows)
            progress(1)
    out: dict[str, dict[str, torch.Tensor]] = {name: {} for name in maps}
    for (name, mode, k), row in zip(jobs, scores):
        out[name].setdefault(mode, torch.empty(n, steps + 1, device=x.device))[:, k] = row
    return out


def prob_fn_rows(prob_fn, batch: torch.Tensor, n: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Calls prob_fn on a batch made of whole copies of the rows (or a slice of them)."""
    copies = len(batch) // n
    index = (torch.arange(n, device=batch.device) if rows is None else rows).repeat(copies)
    return prob_fn(batch, index).float()


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under each row's curve over [0, 1] (trapezoid rule)."""
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), dim=1)


# ---- sanity check ----------------------------------------------------------------------------------


def parametrised_layers(net: nn.Module, example: torch.Tensor, forward) -> list[tuple[str, nn.Module]]:
    """Modules with their own weights, in the order they run (hooks), so the top comes last."""
    order: list[tuple[str, nn.Module]] = []
    handles = []
    for name, module in net.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            handles.append(
                module.register_forward_hook(
                    lambda m, _i, _o, name=name: order.append((name, m)) if all(m is not o for _, o in order) else None
                )
            )
    try:
        with torch.no_grad():
            forward(example)
    finally:
        for h in handles:
            h.remove()
    return order


def randomise(module: nn.Module, generator_seed: int) -> None:
    """Fresh initial weights for one module, drawn as its own constructor would draw them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_seed)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:
            for p in module.parameters(recurse=False):
                nn.init.normal_(p.data, std=0.02)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            # Fresh BN statistics are the identity; random ones change the map like any other layer.
            with torch.no_grad():
                module.weight.normal_(1.0, 0.5) if module.weight is not None else None
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.5, 2.0)


def cascade_stages(n_layers: int, stages: int) -> list[int]:
    """How many top layers each stage randomises: the top one alone first, all of them last."""
    if stages <= 1 or n_layers <= 1:
        return [n_layers]
    return sorted({round(1 + (n_layers - 1) * k / (stages - 1)) for k in range(stages)})


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rho per row (average ranks for ties); NaN where a map is constant."""
    from scipy.stats import rankdata

    ra = torch.from_numpy(rankdata(a.flatten(1).cpu().double().numpy(), axis=1))
    rb = torch.from_numpy(rankdata(b.flatten(1).cpu().double().numpy(), axis=1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denominator = ra.norm(dim=1) * rb.norm(dim=1)
    return torch.where(
        denominator > 0, (ra * rb).sum(1) / denominator.clamp_min(1e-12), torch.full_like(denominator, float("nan"))
    )


# ---- localisation ----------------------------------------------------------------------------------


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
