"""The automatic target of the targeted patches (classifiers): the class a patch reaches best, chosen alike in every
run whatever its seed.

1. Candidates: the CANDIDATES classes the untargeted patches (every restart, every scale) turn the most training
   images into, at fixed places (JUDGE_SEED). An untargeted patch drifts each image to the nearest class it can.
2. Screening: for each candidate, a targeted patch at score_scale trained from a fixed generator (TARGET_SEED) on
   the training images and judged on the judging slice; the candidate it turns the most images into wins.

Why not the vote alone: which class an untargeted patch drifts to depends on the draw (on digits-cnn the 20%
patches drifted to '0', '1' or '9' by seed), and targets differ in strength (success at 10% on digits-cnn ranged
from 0.07 for '6' to 0.56 for '9'), so the vote swung the score by 0.2 between seeds. The screening sets every
candidate the same fixed test: only the list of candidates follows the seed, and the strongest class is on it.
Held-out images play no part.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from auditor.probes.patch.geometry import patched
from auditor.probes.patch.training import JUDGE_SEED, Restarts, Training, judging_rows, train_patches
from auditor.targets import chunks

if TYPE_CHECKING:
    from auditor.probes.patch.goals.base import Goal

CANDIDATES = 3  # classes screened
TARGET_SEED = 20  # the screening patches' draws: fixed, so a class is screened alike in every run


@torch.no_grad()
def candidates(adapter, train: Goal, untargeted: Restarts, scales: list[float], training: Training) -> list[int]:
    """The classes the untargeted patches turn the most judging images into, most first; if they change no
    prediction, the classes most often second in the clean logits."""
    rows = judging_rows(train, training.judge)
    votes = torch.zeros(adapter.num_classes, dtype=torch.long, device=rows.device)
    for k, scale in enumerate(scales):
        where = train.place(rows, scale, torch.Generator().manual_seed(JUDGE_SEED), train=False)
        for patches in untargeted.patches:
            for s in chunks(len(rows), training.batch_size):
                pred = adapter(patched(train.pixels(rows[s]), patches[k], [w.take(s) for w in where])[0]).argmax(1)
                votes += torch.bincount(pred[pred != train.clean[rows[s]]], minlength=adapter.num_classes)
    if votes.sum() == 0:
        for s in chunks(len(rows), training.batch_size):
            logits = adapter(train.pixels(rows[s]))
            runner_up = logits.scatter(1, train.clean[rows[s], None], -float("inf")).argmax(1)
            votes += torch.bincount(runner_up, minlength=adapter.num_classes)
    order = torch.argsort(votes, descending=True, stable=True)
    return [int(c) for c in order[: min(CANDIDATES, int((votes > 0).sum()))]]


def screen(adapter, train: Goal, classes: list[int], scale: float, rows: int, training: Training) -> dict[int, float]:
    """Each class's targeted success on the judging slice, its patch trained at `scale` alone with `rows` images a
    step (what one scale gets in the full run) from TARGET_SEED."""
    generator = torch.Generator(device=train.images.device).manual_seed(TARGET_SEED)
    fixed = replace(training, rows=rows, generator=generator, restarts=1)
    judged = judging_rows(train, training.judge)
    out = {}
    for c in classes:
        train.target = c
        patch = train_patches(adapter, train, [scale], "targeted", fixed)[0]
        success = train.success_on([patch], "targeted", scale, judged, fixed)[0]
        out[c] = -1.0 if success is None else success
    train.target = None
    return out
