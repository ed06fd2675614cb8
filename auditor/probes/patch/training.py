"""Training the patches: the split, the Adam loop shared by every scale, and the choice of the target.

The split: a seeded `held_out` share of the data is set aside before anything is trained
(`split`); the training Goal holds the other images only, so the patches and the choice of
the target never see a held-out image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from auditor.probes.patch.geometry import patched
from auditor.targets import chunks

if TYPE_CHECKING:
    from auditor.probes.patch.goals.base import Goal


@dataclass
class Training:
    """How the patches are trained, and what the run lends the training: its draws, batch size and progress bar."""

    steps: int  # Adam steps per patch
    rows: int  # images per step, shared by the scales
    lr: float  # Adam, on pixel values in [0, 1]
    generator: torch.Generator  # every draw of images and placements
    batch_size: int  # forwards outside the loop (choose_target)
    bar: Any  # a tqdm-like progress bar: one update per step


def split(n: int, held_out: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
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
            loss = goal.loss(adapter(torch.cat(images)), torch.cat(picked), torch.cat(covers), mode).mean()
            grads = torch.autograd.grad(loss, patches)  # the patches' alone: the model's weights get no .grad
            for patch, grad in zip(patches, grads):
                patch.grad = grad
            optimiser.step()
            with torch.no_grad():
                for patch in patches:
                    patch.clamp_(0, 1)
            training.bar.update(1)
    return [patch.detach() for patch in patches]


@torch.no_grad()
def choose_target(adapter, train: Goal, patch: torch.Tensor, scale: float, training: Training) -> int:
    """The class easiest to reach, read off what the untargeted patch (largest scale) already does.

    An untargeted patch drifts each image to whichever class is nearest for it; the class it
    drifts most training images to is the cheapest target, at the cost of one forward over the
    training split. If it changes no prediction, the class most often second in the clean
    logits stands in. Held-out images play no part.
    """
    idx = train.candidates
    where = train.place(idx, scale, training.generator, train=False)
    votes = torch.zeros(adapter.num_classes, dtype=torch.long, device=idx.device)
    for s in chunks(len(idx), training.batch_size):
        pred = adapter(patched(train.pixels(idx[s]), patch, [w.take(s) for w in where])[0]).argmax(1)
        votes += torch.bincount(pred[pred != train.clean[idx[s]]], minlength=adapter.num_classes)
    if votes.sum() == 0:
        for s in chunks(len(idx), training.batch_size):
            logits = adapter(train.pixels(idx[s]))
            runner_up = logits.scatter(1, train.clean[idx[s], None], -float("inf")).argmax(1)
            votes += torch.bincount(runner_up, minlength=adapter.num_classes)
    return int(votes.argmax())
