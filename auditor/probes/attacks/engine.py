"""Batched L-inf FGSM and PGD on the device, and the bisection behind the minimal ε per image.

The probe's robustness figures come from the ensemble (ensemble.py: APGD-CE, APGD-T, Square); FGSM
gives the one-step figure the masking checks compare against, and PGD is the classic baseline that
bench/attack_step.py times against the model's own forward+backward and the peers.

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

from typing import Any

import torch
import torch.nn.functional as F

from auditor.tasks import task_of


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
            # a model whose output does not reach back to its input (a detached or non-differentiable input
            # stage) has no gradient: zero, which the masking checks then report
            grad = torch.autograd.grad(loss.sum(), x, allow_unused=True)[0] if loss.requires_grad else None
        return (torch.zeros_like(x) if grad is None else grad), loss.detach(), wrong

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
