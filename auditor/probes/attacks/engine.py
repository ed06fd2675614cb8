"""Batched L-inf attacks on the device: FGSM, PGD with restarts, the sweep over an ε grid, and the
minimal ε per image.

FGSM: Goodfellow et al. 2015. PGD: Madry et al. 2018, random start, step size
step_factor * ε / steps. Every task attacks the adapter's own per-image loss (cross-entropy,
pixel cross-entropy, the detector's training loss). Where an image is right or wrong as a whole
(classifiers: the task's `attack_stops_when_wrong`) the loop also keeps, per image, the first
iterate that is misclassified, as AutoAttack's PGD does: the last iterate can step back over the
boundary, and a success found on the way is a success.

Why not ART's ProjectedGradientDescent as the hot loop: measured on 2 CPU cores (resnet18,
batch 16, 224 px, bench/attack_step.py) it runs at 0.70 of the model's own forward+backward,
because every step goes through numpy and back; this loop stays on the device at 0.91.
tests/test_attacks.py checks that it is at least as strong as ART's and torchattacks' PGD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from auditor.probes.base import Context
from auditor.tasks import task_of

BROKEN_SHARE = 0.5  # an image is broken when it keeps less than half of its clean agreement with the reference


def _per_image(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """ε as a tensor broadcastable over x (one value per image, or one for all)."""
    eps = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    return eps.reshape(-1, *([1] * (x.dim() - 1))) if eps.dim() else eps


class LinfAttack:
    """FGSM and PGD against `adapter` on batches of pixel-space images in [0, 1]."""

    def __init__(
        self,
        adapter,
        steps: int = 20,
        step_factor: float = 2.5,
        restarts: int = 1,
        generator: torch.Generator | None = None,
        early_stop: bool = True,
    ):
        self.adapter, self.steps, self.step_factor, self.restarts = adapter, steps, step_factor, restarts
        self.generator = generator
        # an image right or wrong as a whole: cross-entropy on the logits, and misclassified images leave
        self.stops_when_wrong = task_of(adapter).attack_stops_when_wrong
        self.early_stop = early_stop and self.stops_when_wrong  # benchmarks switch it off to time full steps

    def _loss(self, x: torch.Tensor, y: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-image loss, and (an image right or wrong as a whole) whether each image is misclassified."""
        if self.stops_when_wrong:
            logits = self.adapter(x)
            return F.cross_entropy(logits, y, reduction="none"), logits.argmax(1) != y
        return self.adapter.objective(x, y), None

    def gradient(self, x: torch.Tensor, y: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(input gradient, per-image loss, misclassified) with one forward and one backward."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss, wrong = self._loss(x, y)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        return grad, loss.detach(), wrong

    def fgsm_from_gradient(self, x: torch.Tensor, grad: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        # a non-finite gradient moves nothing rather than turning the image into NaN
        return (x + _per_image(eps, x) * torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0).sign()).clamp(0, 1)

    def fgsm(self, x: torch.Tensor, y: Any, eps: float | torch.Tensor) -> torch.Tensor:
        return self.fgsm_from_gradient(x, self.gradient(x, y)[0], eps)

    def pgd(
        self, x: torch.Tensor, y: Any, eps: float | torch.Tensor, steps: int | None = None, restarts: int | None = None
    ) -> torch.Tensor:
        """The strongest of `restarts` PGD runs per image (ε: one value, or one per image).

        Where an image is right or wrong as a whole (classifiers), it leaves the batch as soon as it is
        misclassified (its adversarial is kept), so large budgets cost a step or two instead of all of them.
        """
        steps, restarts = steps or self.steps, restarts or self.restarts
        x = x.detach()
        e_all = _per_image(eps, x).expand(len(x), *([1] * (x.dim() - 1)))
        best = x.clone()
        best_loss = torch.full((len(x),), -float("inf"), device=x.device)
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device)  # already misclassified
        for _ in range(restarts):
            idx = torch.nonzero(~found).flatten() if self.stops_when_wrong else torch.arange(len(x), device=x.device)
            if len(idx) == 0:
                break
            xa, e = x[idx], e_all[idx]
            ya = y[idx] if self.stops_when_wrong else y
            lo, hi, step = (xa - e).clamp(0, 1), (xa + e).clamp(0, 1), self.step_factor * e / steps
            adv = (xa + torch.empty_like(xa).uniform_(-1, 1, generator=self.generator) * e).clamp(0, 1)
            for _ in range(steps):
                grad, loss, wrong = self.gradient(adv, ya)
                self._keep(best, best_loss, found, idx, adv, loss, wrong)
                if self.early_stop and wrong.any():  # done with these: shrink the batch
                    left = ~wrong
                    if not left.any():
                        break
                    idx, adv, grad, ya, lo, hi, step = (t[left] for t in (idx, adv, grad, ya, lo, hi, step))
                grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
                adv = torch.min(torch.max(adv + step * grad.sign(), lo), hi)
            else:
                with torch.no_grad():
                    loss, wrong = self._loss(adv, ya)
                self._keep(best, best_loss, found, idx, adv, loss, wrong)
        return best

    @staticmethod
    def _keep(best, best_loss, found, idx, adv, loss, wrong) -> None:
        """Update best, best_loss and found (rows idx) in place: a first misclassified iterate wins,
        else the highest loss."""
        if wrong is not None:
            new = ~found[idx]
            take = new & (wrong | (loss > best_loss[idx]))
            found[idx] |= wrong
        else:
            take = loss > best_loss[idx]
        rows = idx[take]
        best[rows] = adv[take].detach()
        best_loss[rows] = loss[take]


def bisect_min_eps(broken_at, lo: torch.Tensor, hi: torch.Tensor, rounds: int) -> torch.Tensor:
    """Smallest ε per image in (lo, hi] that breaks it, by bisection: hi is known to break, lo not.

    broken_at(eps) -> bool tensor per image, for a tensor of per-image budgets. Each round
    halves every image's bracket with one batched attack.
    """
    lo, hi = lo.clone(), hi.clone()
    for _ in range(rounds):
        mid = (lo + hi) / 2
        broken = broken_at(mid)
        hi = torch.where(broken, mid, hi)
        lo = torch.where(broken, lo, mid)
    return hi


@dataclass
class Sweep:
    """The data attacked at every ε of the grid: predictions and the task's metric per ε (grid order)."""

    grid: list[str]  # the budgets as given ('0.1', '2/255')
    values: list[float]
    order: list[int]  # grid indices by increasing ε
    clean_pred: Any
    reference: Any  # the labels, or (label-free) the clean prediction
    fgsm_pred: list
    pgd_pred: list
    clean: float  # the metric on clean images (1.0 label-free: the reference is the prediction)
    pgd: list[float]
    fgsm: list[float]
    zero_share: float  # share of images whose clean input gradient is all zero
    bad_share: float  # share of images whose clean input gradient is not finite


def sweep(ctx: Context, engine: LinfAttack, grid: list[str], values: list[float], clean_pred, reference, bar) -> Sweep:
    """Every batch attacked at every ε (smallest first): FGSM from one clean gradient, and PGD."""
    task, data = ctx.task, ctx.data
    order = sorted(range(len(grid)), key=lambda i: values[i])
    fgsm_parts, pgd_parts = [[] for _ in grid], [[] for _ in grid]
    zero_grad, bad_grad = [], []
    for b in range(-(-len(data) // ctx.batch_size)):
        sl = slice(b * ctx.batch_size, (b + 1) * ctx.batch_size)
        x = data.images_at(sl, ctx.device)
        ref = task.to(task.take(reference, sl), ctx.device)
        grad, _, _ = engine.gradient(x, ref)  # one clean gradient serves FGSM at every ε
        finite = torch.isfinite(grad).flatten(1).all(1)
        bad_grad.append(~finite.cpu())
        zero_grad.append((finite & (grad.flatten(1).abs().amax(1) == 0)).cpu())
        for gi in order:
            x_fgsm = engine.fgsm_from_gradient(x, grad, values[gi])
            x_pgd = engine.pgd(x, ref, values[gi])
            with torch.no_grad():
                fgsm_parts[gi].append(task.predict(ctx.adapter, x_fgsm))
                pgd_parts[gi].append(task.predict(ctx.adapter, x_pgd))
            bar.update(1)
    fgsm_pred = [task.concat(parts) for parts in fgsm_parts]
    pgd_pred = [task.concat(parts) for parts in pgd_parts]
    return Sweep(
        grid=grid,
        values=values,
        order=order,
        clean_pred=clean_pred,
        reference=reference,
        fgsm_pred=fgsm_pred,
        pgd_pred=pgd_pred,
        clean=task.score(clean_pred, reference, ctx.adapter) if data.labelled else 1.0,
        pgd=[task.score(pred, reference, ctx.adapter) for pred in pgd_pred],
        fgsm=[task.score(pred, reference, ctx.adapter) for pred in fgsm_pred],
        zero_share=float(torch.cat(zero_grad).double().mean()),
        bad_share=float(torch.cat(bad_grad).double().mean()),
    )


def min_eps(ctx: Context, engine: LinfAttack, s: Sweep, subset: list[int], rounds: int, bar):
    """Per image of the subset: the smallest ε that breaks it (0 if wrong when clean), and whether
    it withstood the whole grid (then its value is the largest ε, a lower bound). Two numpy arrays.

    The grid brackets each image's minimal ε; `rounds` of bisection, each one batched attack over
    the images still searched, narrow the bracket.
    """
    if not subset:
        return np.zeros(0), np.zeros(0, dtype=bool)
    task, k = ctx.task, ctx.adapter.num_classes
    idx = torch.tensor(subset)
    a_clean = task.image_score(s.clean_pred, s.reference, k)[idx]
    agree_pgd = [task.image_score(pred, s.reference, k) for pred in s.pgd_pred]
    broken = torch.stack([agree_pgd[gi][idx] < BROKEN_SHARE * a_clean for gi in s.order])  # G x S
    ever = broken.any(0)
    first = broken.float().argmax(0)
    sorted_values = torch.tensor([s.values[gi] for gi in s.order], dtype=torch.float64)
    hi = torch.where(ever, sorted_values[first], sorted_values[-1])
    lo = torch.where(first > 0, sorted_values[(first - 1).clamp_min(0)], torch.zeros_like(hi))
    wrong_clean = a_clean <= 0
    rows = torch.nonzero(ever & ~wrong_clean).flatten()
    if len(rows) and rounds:

        def broken_at(eps: torch.Tensor) -> torch.Tensor:
            out = []
            for start in range(0, len(rows), ctx.batch_size):
                chunk = rows[start : start + ctx.batch_size]
                members = [subset[int(i)] for i in chunk]
                x = ctx.data.images_at(members, ctx.device)
                ref = task.take(s.reference, members)
                budgets = eps[start : start + ctx.batch_size].to(ctx.device, x.dtype)
                adv = engine.pgd(x, task.to(ref, ctx.device), budgets)
                with torch.no_grad():
                    agree = task.image_score(task.predict(ctx.adapter, adv), ref, k)
                out.append(agree < BROKEN_SHARE * a_clean[chunk])
                bar.update(1)
            return torch.cat(out)

        hi[rows] = bisect_min_eps(broken_at, lo[rows], hi[rows], rounds)
    result = torch.where(wrong_clean, torch.zeros_like(hi), hi)
    return result.numpy(), (~ever & ~wrong_clean).numpy()
