"""Training the patches: the split, the Adam loop shared by every scale, and the choice of the target.

The split: a `held_out` share of the data is set aside before anything is trained (`split`),
drawn with SPLIT_SEED and never with the run's seed, so that every run scores on the same
held-out images (two runs can then be compared image by image); the training Goal holds the
other images only, so the patches and the choice of the target never see a held-out image.

Restarts: Adam on a patch lands in a different optimum for every draw of its initial pixels,
images and placements, so one training run's success swings with the run's seed. Each scale's
patch is trained `restarts` times from the run's generator and the strongest on the training
images is kept (`strongest`): the worst case for the model, and far steadier than one draw.
The judge is a fixed slice of the training split with fixed placements (JUDGE_SEED), the same
for every restart, so the restarts are compared on the same test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from auditor import distributed
from auditor.data import seeded_subset
from auditor.probes.patch.geometry import patched

if TYPE_CHECKING:
    from auditor.probes.patch.goals.base import Goal


@dataclass
class Training:
    """How the patches are trained, and what the run lends the training: its draws, batch size and progress bar."""

    steps: int  # Adam steps per patch
    rows: int  # images per step, shared by the scales
    lr: float  # Adam, on pixel values in [0, 1]
    generator: torch.Generator  # every draw of images and placements
    batch_size: int  # forwards outside the loop (judging the restarts, choose_target)
    bar: Any  # a tqdm-like progress bar: one update per step and per batch judged
    restarts: int = 1  # patches trained per scale and mode; the strongest on the judging slice is kept
    judge: int = 0  # training images (at most) that judge the restarts; 0: every one a patch can sit on
    decay: bool = False  # cosine learning-rate decay to 0 over the steps


@dataclass
class Restarts:
    """Every restart of one mode (per restart, a patch per scale), each one's success on the judging slice of
    the training images, and the strongest per scale: what the run keeps."""

    patches: list[list[torch.Tensor]]  # restart -> scale -> patch
    success: list[list[float | None]]  # restart -> scale -> success on the judging slice (None: nothing counted)
    judged_on: int  # images in the judging slice

    @property
    def kept(self) -> list[int]:
        """Per scale, the restart with the highest training success (the first among equals)."""
        per_scale = zip(*self.success)
        return [max(range(len(s)), key=lambda r: -1.0 if s[r] is None else s[r]) for s in per_scale]

    def best(self) -> list[torch.Tensor]:
        return [self.patches[r][k] for k, r in enumerate(self.kept)]

    def spread(self) -> list[list[float] | None]:
        """Per scale, [lowest, highest] training success among the restarts (None: nothing counted)."""
        out = []
        for per_scale in zip(*self.success):
            values = [v for v in per_scale if v is not None]
            out.append([round(min(values), 6), round(max(values), 6)] if values else None)
        return out


SPLIT_SEED = 17  # the held-out split's permutation: fixed, not the run's seed (every run scores the same images)
JUDGE_SEED = 18  # the training slice that judges the restarts, and its placements


def split(n: int, held_out: float, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, held-out indices), disjoint, from a seeded permutation; each side gets at least one."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    n_test = min(max(round(n * held_out), 1), n - 1)
    return order[n_test:].sort().values, order[:n_test].sort().values


def away_from(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """-log(1 - p_reference), per row (and pixel): falls to zero as the reference class loses, never explodes."""
    own = F.one_hot(reference.long(), logits.shape[1]).movedim(-1, 1).bool()
    return torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(own, -float("inf")), 1)


def train_patches(adapter, goal: Goal, scales: list[float], mode: str, training: Training) -> list[torch.Tensor]:
    """One patch per scale, all trained together: each step, every patch on its own images, ONE forward+backward.

    Only the training goal's images are ever drawn (`goal.candidates`).
    """
    device, generator = goal.images.device, training.generator
    patches = [
        torch.rand(adapter.channels, s, s, generator=generator, device=device).requires_grad_(True)
        for s in goal.patch_sides(scales)
    ]
    optimiser = torch.optim.Adam(patches, lr=training.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(training.steps, 1)) if training.decay else None
    pool = goal.candidates
    per = max(1, min(training.rows // len(scales), len(pool)))
    if len(pool) == 0:  # nothing to sit on (a detector's split without objects): the patches stay as drawn
        training.bar.update(training.steps)
        return [patch.detach() for patch in patches]
    with torch.enable_grad():
        for _ in range(training.steps):
            images, covers, picked = [], [], []
            for patch, scale in zip(patches, scales):
                idx = pool[torch.randperm(len(pool), generator=generator, device=device)[:per]]
                x, cover = patched(goal.pixels(idx), patch, goal.place(idx, scale, generator, train=True))
                images.append(x)
                covers.append(cover)
                picked.append(idx)
            x, idx, cover = torch.cat(images), torch.cat(picked), torch.cat(covers)
            grads = distributed.summed(lambda: _gradients(adapter, goal, patches, x, idx, cover, mode), patches)
            for patch, grad in zip(patches, grads):
                patch.grad = grad
            optimiser.step()
            if schedule is not None:
                schedule.step()
            with torch.no_grad():
                for patch in patches:
                    patch.clamp_(0, 1)
            training.bar.update(1)
    return [patch.detach() for patch in patches]


def _gradients(adapter, goal: Goal, patches: list[torch.Tensor], x, idx, cover, mode: str) -> list[torch.Tensor]:
    """The gradient of the step's mean loss for the patches alone (the model's weights get no .grad). Sharded
    (auditor.distributed), every rank drew the same images and placements and runs its share of the rows;
    the shares' gradients, each of its rows' summed loss over all the step's rows, add up to the mean's."""
    if not distributed.active():
        return list(torch.autograd.grad(goal.loss(adapter(x), idx, cover, mode).mean(), patches))
    mine = distributed.share(len(x))
    if mine.start == mine.stop:  # fewer rows than ranks: nothing on this one
        return [torch.zeros_like(p) for p in patches]
    loss = goal.loss(adapter(x[mine]), idx[mine], cover[mine], mode).sum() / len(x)
    grads = torch.autograd.grad(loss, patches, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(patches, grads)]


def strongest(adapter, goal: Goal, scales: list[float], mode: str, training: Training) -> Restarts:
    """`training.restarts` patches per scale, each set trained from the run's generator in turn (new initial
    pixels, images and placements), and judged on the same training images at the same places."""
    patches = [train_patches(adapter, goal, scales, mode, training) for _ in range(training.restarts)]
    rows = judging_rows(goal, training.judge)
    success = [goal.success_on(patches, mode, scale, rows, training) for scale, patches in zip(scales, zip(*patches))]
    return Restarts(patches, [list(r) for r in zip(*success)], len(rows))


def judging_rows(goal: Goal, judge: int) -> torch.Tensor:
    """The training images that judge the restarts: `judge` of those a patch can sit on, drawn with JUDGE_SEED."""
    pool = goal.candidates
    return pool[torch.tensor(seeded_subset(len(pool), judge or None, JUDGE_SEED), dtype=torch.long, device=pool.device)]
