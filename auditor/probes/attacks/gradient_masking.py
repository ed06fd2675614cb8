"""Signs that an attack result overstates robustness (gradient masking, an under-converged attack).

The checks follow Athalye et al. 2018 ("Obfuscated gradients give a false sense of
security") and the flags AutoAttack raises (Croce & Hein 2020): a robust metric that
rises with ε, a one-step attack beating the iterative one, a stronger PGD still lowering
the metric, an unbounded budget that does not reach (near) zero, gradients that vanish or
are not finite, and a gradient-free attack succeeding where PGD failed. Each check is
one row of the report; any failed check sets the probe's `suspect_masking` metric to 1.

The first three read the sweep over the grid; the other three attack a seeded subset again
(`attack_again`): twice the steps (and, where restarts are cheap, more restarts), ε = 1, and
ART's gradient-free Square attack (Andriushchenko et al. 2020) where the task has a classifier.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from auditor.data import seeded_subset
from auditor.probes.attacks.engine import LinfAttack, Sweep
from auditor.probes.base import Context

MARGIN = 0.01  # metric differences below this are noise for these checks
STRONGER_MARGIN = 0.05  # a stronger PGD lowering the metric by more than this (and two images): not converged
UNBOUNDED_SHARE = 0.1  # at ε = 1 the metric must fall below this share of clean
BAD_GRADIENT_SHARE = 0.05  # share of images with a zero or non-finite input gradient that is suspicious

MONOTONE = "monotone in ε"
FGSM_WEAKER = "FGSM no stronger than PGD"
GRADIENTS = "input gradients usable"
STRONGER = "more steps and restarts"
UNBOUNDED = "unbounded ε reaches zero"
GRADIENT_FREE = "gradient-free attack finds nothing PGD missed"


@dataclass
class Check:
    name: str
    flagged: bool | None  # None: not run (with the reason in text)
    text: str

    def to_dict(self) -> dict:
        return asdict(self)


def monotone(grid: list[str], values: list[float], pgd: list[float]) -> Check:
    order = sorted(range(len(values)), key=lambda i: values[i])
    rises = [(grid[a], grid[b]) for a, b in zip(order, order[1:]) if pgd[b] > pgd[a] + MARGIN]
    if rises:
        pairs = ", ".join(f"{a} → {b}" for a, b in rises)
        return Check(
            MONOTONE,
            True,
            f"the metric under PGD rises with ε ({pairs}): a larger budget can "
            "always do what a smaller one did, so the attack is not finding them",
        )
    return Check(MONOTONE, False, "the metric under PGD never rises with ε")


def fgsm_weaker(grid: list[str], pgd: list[float], fgsm: list[float], steps: int) -> Check:
    stronger = [g for g, a, f in zip(grid, pgd, fgsm) if f < a - MARGIN]
    if stronger:
        return Check(
            FGSM_WEAKER,
            True,
            f"one-step FGSM beats {steps}-step PGD at ε={', '.join(stronger)}: PGD is under-converged or "
            "the loss surface is masked",
        )
    return Check(FGSM_WEAKER, False, "PGD is at least as strong as FGSM at every ε")


def stronger_pgd(eps: str, base: float, stronger: float, steps: int, restarts: int, n: int) -> Check:
    name = STRONGER
    detail = (
        f"at ε={eps} on {n} images: {base:.3f} with the probe's PGD, {stronger:.3f} with {steps} steps "
        f"× {restarts} restarts"
    )
    if stronger < base - max(STRONGER_MARGIN, 2 / max(n, 1)):  # two images can differ by chance on a small set
        return Check(name, True, detail + ": the attack has not converged; raise attacks.steps / attacks.restarts")
    return Check(name, False, detail)


def unbounded(value: float, clean: float, n: int) -> Check:
    name = UNBOUNDED
    detail = f"at ε=1 (any image allowed) on {n} images the metric is {value:.3f} (clean {clean:.3f})"
    if value > UNBOUNDED_SHARE * clean + MARGIN:
        return Check(
            name,
            True,
            detail + ": an attack that may replace the whole image should reach (near) "
            "zero; the gradients do not lead anywhere",
        )
    return Check(name, False, detail)


def gradients(zero_share: float, nonfinite_share: float) -> Check:
    name = GRADIENTS
    detail = f"{zero_share:.1%} of the images have an all-zero input gradient, {nonfinite_share:.1%} a non-finite one"
    if nonfinite_share > 0 or zero_share > BAD_GRADIENT_SHARE:
        return Check(
            name, True, detail + ": gradient attacks cannot move these images, so their robustness is not measured"
        )
    return Check(name, False, detail)


def gradient_free(eps: str, tried: int, broken: int, queries: int) -> Check:
    name = GRADIENT_FREE
    if tried == 0:
        return Check(
            name, False, f"at ε={eps} PGD broke every image tried, so there was nothing left for the Square attack"
        )
    detail = f"at ε={eps} the Square attack ({queries} queries) broke {broken} of {tried} images that PGD did not"
    if broken > 0:
        return Check(name, True, detail + ": a black-box attack beating a white-box one points at masked gradients")
    return Check(name, False, detail)


def not_run(name: str, why: str) -> Check:
    return Check(name, None, why)


def check_eps(s: Sweep) -> int:
    """The grid ε whose PGD metric is nearest half of clean: where a weak attack shows most."""
    return min(s.order, key=lambda gi: (abs(s.pgd[gi] - 0.5 * s.clean), s.values[gi]))


def from_sweep(s: Sweep, steps: int) -> list[Check]:
    """The checks the sweep itself answers: monotone in ε, FGSM no stronger, usable gradients."""
    return [
        monotone(s.grid, s.values, s.pgd),
        fgsm_weaker(s.grid, s.pgd, s.fgsm, steps),
        gradients(s.zero_share, s.bad_share),
    ]


def attack_again(
    ctx: Context, engine: LinfAttack, s: Sweep, steps: int, restarts: int, check_images: int, square_queries: int
) -> list[Check]:
    """The checks that attack `check_images` seeded images again at the check ε (see check_eps)."""
    if check_images == 0:
        return [not_run(n, "skipped: attacks.check_images = 0") for n in (STRONGER, UNBOUNDED, GRADIENT_FREE)]
    task, adapter, gi = ctx.task, ctx.adapter, check_eps(s)
    members = seeded_subset(len(ctx.data), check_images, ctx.seed + 1)
    ref = task.take(s.reference, members)
    base = task.score(task.take(s.pgd_pred[gi], members), ref, adapter)
    clean = task.score(task.take(s.clean_pred, members), ref, adapter)
    # Twice the steps; where restarts are cheap (classifiers, thanks to early stopping) more restarts.
    steps, restarts = 2 * steps, restarts + task.attack_check_restarts
    strong, unbounded_pred = _stronger_and_unbounded(ctx, engine, s.reference, members, s.values[gi], steps, restarts)
    checks = [
        stronger_pgd(s.grid[gi], base, task.score(strong, ref, adapter), steps, restarts, len(members)),
        unbounded(task.score(unbounded_pred, ref, adapter), clean, len(members)),
    ]
    if not task.attack_square:
        why = f"ART's Square attack needs a classifier; not run for {task.name} models"
        return [*checks, not_run(GRADIENT_FREE, why)]
    held = [i for i in members if bool(s.pgd_pred[gi][i] == s.reference[i]) and bool(s.clean_pred[i] == s.reference[i])]
    broken = square_broken(ctx, held, s.reference, s.values[gi], square_queries) if held else 0
    return [*checks, gradient_free(s.grid[gi], len(held), broken, square_queries)]


def _stronger_and_unbounded(ctx: Context, engine: LinfAttack, reference, members, eps: float, steps, restarts):
    """Predictions under the stronger PGD at ε and under PGD at ε = 1, on `members`.

    The two attacks share each batch (ε is per image): a detector's or segmenter's step costs about
    the same for 8 images as for 16 on a CPU.
    """
    task = ctx.task
    strong, unbounded_pred = [], []
    half = max(1, ctx.batch_size // 2)
    for start in range(0, len(members), half):
        chunk = members[start : start + half]
        x = ctx.data.images_at(chunk, ctx.device)
        r = task.take(reference, chunk)
        budgets = torch.tensor([eps] * len(chunk) + [1.0] * len(chunk), device=ctx.device)
        adv = engine.pgd(
            torch.cat([x, x]), task.to(task.concat([r, r]), ctx.device), budgets, steps=steps, restarts=restarts
        )
        with torch.no_grad():
            pred = task.predict(ctx.adapter, adv)
        strong.append(task.take(pred, slice(0, len(chunk))))
        unbounded_pred.append(task.take(pred, slice(len(chunk), None)))
    return task.concat(strong), task.concat(unbounded_pred)


def square_broken(ctx: Context, members: list[int], reference, eps: float, queries: int) -> int:
    """How many of these images ART's Square attack (Andriushchenko et al. 2020) misclassifies at ε."""
    # ART is imported here, not at the top: it adds about 1.5 s to every `audit` start, and only this check uses it
    from art.attacks.evasion import SquareAttack
    from art.estimators.classification import PyTorchClassifier

    adapter = ctx.adapter
    if ctx.device.type == "cuda" and ctx.device.index is not None:
        # ART places its model on the current CUDA device; plain "cuda" already is it
        # (set_device refuses a device without an index: seen on an H200 with torch 2.11)
        torch.cuda.set_device(ctx.device)
    estimator = PyTorchClassifier(
        model=adapter,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(adapter.channels, *adapter.input_size),
        nb_classes=adapter.num_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if ctx.device.type == "cuda" else "cpu",
    )
    np.random.seed(ctx.seed)  # Square draws its squares from numpy
    attack = SquareAttack(
        estimator, norm=np.inf, eps=eps, max_iter=queries, nb_restarts=1, batch_size=ctx.batch_size, verbose=False
    )
    x = ctx.data.images_at(members).numpy()
    y = reference[torch.tensor(members)].numpy()
    adv = torch.from_numpy(attack.generate(x=x, y=y)).to(ctx.device)
    with torch.no_grad():
        pred = adapter.predict(adv).cpu()
    return int((pred != torch.from_numpy(y)).sum())
