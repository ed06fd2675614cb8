"""Faithfulness: does a map point at what the model uses? (Petsiuk et al. 2018)

Deletion and insertion curves of each map beside two baselines, a random map as coarse as
the CAM and an edge (Sobel) map: deletion sets the map's top pixels to black, insertion
reveals them on a blurred copy, and the model's score of the row is read at each step.
ROAD (auditor.probes.gradcam.road) reads the judged map and the baselines once more with
the removed pixels imputed instead of blacked out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import gaussian_blur

from auditor import distributed
from auditor.cam import ScoreFn, normalise, upsample
from auditor.probes.gradcam.details import Auc, RoadAuc
from auditor.probes.gradcam.figures import LABELS
from auditor.probes.gradcam.maps import Maps
from auditor.probes.gradcam.road import road_curves
from auditor.results import Finding
from auditor.targets import Targets, target_scores

BASELINES = ("random", "edges")
CHANCE_MARGIN = 0.02  # an AUC within this of the random map's is no better than chance

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
    # The batches are the work a sharded run's ranks share (auditor.distributed); nothing in them draws.
    if rows_per_job > 1:  # several whole jobs in one batch

        def group_of(g: int) -> torch.Tensor:
            group = jobs[g * rows_per_job : (g + 1) * rows_per_job]
            batch = torch.cat([image(j, all_rows) for j in group])
            progress(len(group))
            return prob_fn_rows(prob_fn, batch, n).view(len(group), n)

        per_group = lambda g: len(jobs[g * rows_per_job : (g + 1) * rows_per_job])  # noqa: E731
        done = distributed.chunked(group_of, -(-len(jobs) // rows_per_job), progress, per_group)
        for g, part in enumerate(done):
            scores[g * rows_per_job : g * rows_per_job + len(part)] = part
    else:  # one job in several batches

        def job_of(j: int) -> torch.Tensor:
            row = torch.empty(n, device=x.device)
            for start in range(0, n, batch_size):
                rows = all_rows[start : start + batch_size]
                row[rows] = prob_fn_rows(prob_fn, image(jobs[j], rows), len(rows), rows)
            progress(1)
            return row

        for j, row in enumerate(distributed.chunked(job_of, len(jobs), progress, 1)):
            scores[j] = row
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


# ---- the check ----------------------------------------------------------------------------------------------


@dataclass
class Faithfulness:
    curves: dict[str, dict[str, torch.Tensor]]  # map -> {"deletion", "insertion"} -> rows x (steps + 1)
    aucs: dict[str, Auc]  # map -> the mean AUCs: the methods' maps, then the baselines'
    road: dict[str, dict[str, torch.Tensor]]  # the judged map and the baselines -> {"morf", "lerf"} -> rows x steps+1
    road_aucs: dict[str, RoadAuc]


def faithfulness(
    adapter,
    x: torch.Tensor,
    t: Targets,
    maps: Maps,
    rows: int,
    steps: int,
    generator: torch.Generator,
    batch_size: int,
    progress: Callable[[int], None],
) -> Faithfulness:
    """The first `rows` rows, each map and the two baselines through deletion and insertion; the judged
    (primary) map and the baselines through ROAD."""
    size = tuple(x.shape[-2:])
    first = torch.arange(rows, device=x.device)
    x_rows = x[t.image[first]]
    scored = {m: v[first] for m, v in maps.full.items()}
    scored["random"] = random_maps(rows, tuple(maps.coarse[maps.primary].shape[-2:]), size, generator).to(x.device)
    scored["edges"] = sobel_maps(x_rows)
    sub = t.take(first)

    def prob_fn(b, r):
        return target_scores(adapter, b, sub.take(r), probability=True)

    curves = deletion_insertion(prob_fn, x_rows, scored, steps, generator, batch_size, progress)
    aucs = {m: Auc(**{mode: auc(c).mean().item() for mode, c in modes.items()}) for m, modes in curves.items()}
    ranks = {m: pixel_order(scored[m], generator) for m in (maps.primary, *BASELINES)}
    road = road_curves(prob_fn, x_rows, ranks, steps, generator, batch_size, progress)
    road_aucs = {m: RoadAuc(**{o: auc(c).mean().item() for o, c in orders.items()}) for m, orders in road.items()}
    return Faithfulness(curves, aucs, road, road_aucs)


def faithfulness_findings(aucs: dict[str, Auc], method: str, what: str, rows: int) -> tuple[list[Finding], bool]:
    """Whether `method`'s maps beat the random map and the edge map, and whether that leaves them untrustworthy;
    `what` words the score explained (Task.explain_score)."""
    label, mine, rand, edges = LABELS[method], aucs[method], aucs["random"], aucs["edges"]
    if mine.insertion - rand.insertion < CHANCE_MARGIN and rand.deletion - mine.deletion < CHANCE_MARGIN:
        finding = Finding(
            "high",
            f"{label} maps are no better than a random map at finding what "
            f"the model uses: insertion AUC {mine.insertion:.3f} vs random "
            f"{rand.insertion:.3f}, deletion AUC {mine.deletion:.3f} vs random "
            f"{rand.deletion:.3f} ({what}, {rows} rows)",
            key=True,
        )
        return [finding], True
    findings = [
        Finding(
            "info",
            f"{label} beats a random map: revealing its top pixels first "
            f"restores {what} faster (insertion AUC {mine.insertion:.3f} vs "
            f"{rand.insertion:.3f}), removing them destroys it faster (deletion AUC "
            f"{mine.deletion:.3f} vs {rand.deletion:.3f})",
            key=True,
        )
    ]
    if edges.insertion >= mine.insertion and edges.deletion <= mine.deletion:
        findings.append(
            Finding(
                "medium",
                f"an edge map (Sobel) explains the model as well as {label} "
                f"(insertion {edges.insertion:.3f} vs {mine.insertion:.3f}, "
                f"deletion {edges.deletion:.3f} vs {mine.deletion:.3f}): the "
                "maps may show image structure more than the model's reasons",
                key=True,
            )
        )
    return findings, False
