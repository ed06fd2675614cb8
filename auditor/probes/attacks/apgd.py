"""APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks"), batched on the device, L-inf and L2.

What makes it stronger than fixed-step PGD: the step starts at 2ε and halves at checkpoints (at 22% of
the budget, then at shrinking intervals) wherever the loss stopped rising often enough or the best loss
did not improve since the last checkpoint, and each halving restarts from the best point found; steps
carry momentum (0.75 on the new direction). Losses: cross-entropy (APGD-CE), the targeted DLR loss
(APGD-T: the margin to one target class divided by the spread of the top logits, so it is unmoved by a
rescaled or softmaxed output), or the task's own per-image loss (detectors, segmenters).

Where an image is right or wrong as a whole (classifiers), it leaves the batch at its first
misclassified iterate and that iterate is kept; otherwise every image takes every step and keeps its
highest-loss iterate. Every image carries its own step size, checkpoint record and ε.

Why our own loop rather than torchattacks' APGD or ART's AutoProjectedGradientDescent: both run every
image for every step (no leaving), ART through numpy; leaving is where the ensemble's speed comes from
(bench/ensemble.py measures it against torchattacks' AutoAttack on the same images).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

MOMENTUM = 0.75  # weight of the new direction (the paper's alpha)
RHO = 0.75  # a checkpoint halves the step unless the loss rose in at least this share of its steps

LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def checkpoints(steps: int) -> list[int]:
    """The iterations at which the step size may halve: p0 = 0, p1 = 0.22, p(j+1) = p(j) + max(p(j) - p(j-1) - 0.03,
    0.06), times the budget (the paper's schedule)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(q * steps) for q in p[1:] if q * steps < steps} - {0})


def _norm_shape(x: torch.Tensor) -> tuple[int, ...]:
    return (-1, *([1] * (x.dim() - 1)))


class Ball:
    """The threat model: an L-inf or L2 ball of per-image radius ε around x, intersected with [0, 1]."""

    def __init__(self, norm: str, x: torch.Tensor, eps: torch.Tensor):
        self.norm, self.x, self.eps = norm, x, eps.reshape(_norm_shape(x))

    def take(self, keep: torch.Tensor) -> Ball:
        return Ball(self.norm, self.x[keep], self.eps[keep])

    def project(self, z: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return torch.min(torch.max(z, self.x - self.eps), self.x + self.eps).clamp(0, 1)
        delta = z.clamp(0, 1) - self.x
        size = delta.flatten(1).norm(dim=1).reshape(_norm_shape(delta))
        return (self.x + delta * torch.clamp(self.eps / size.clamp_min(1e-12), max=1.0)).clamp(0, 1)

    def ascend(self, z: torch.Tensor, grad: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """One steepest-ascent step of per-image size `step` for the norm (sign for L-inf, unit direction for L2)."""
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        step = step.reshape(_norm_shape(z))
        if self.norm == "linf":
            return z + step * grad.sign()
        size = grad.flatten(1).norm(dim=1).reshape(_norm_shape(grad))
        return z + step * grad / size.clamp_min(1e-12)

    def random_start(self, generator: torch.Generator | None) -> torch.Tensor:
        if self.norm == "linf":
            noise = torch.empty_like(self.x).uniform_(-1, 1, generator=generator)
            return (self.x + self.eps * noise).clamp(0, 1)
        noise = torch.empty_like(self.x).normal_(generator=generator)
        size = noise.flatten(1).norm(dim=1).reshape(_norm_shape(noise))
        return self.project(self.x + self.eps * noise / size.clamp_min(1e-12))


def as_logits(out: torch.Tensor) -> torch.Tensor:
    """Logits from a classifier's output; probabilities (rows of non-negative numbers summing to 1) become their
    logarithm. A model that returns softmax probabilities saturates: the cross-entropy of a probability vector is
    nearly flat and its gradient vanishes in float32, a known way to mask gradients (Carlini & Wagner 2017);
    log-probabilities are the logits up to a constant, which no loss here depends on."""
    with torch.no_grad():
        probabilities = bool((out >= 0).all()) and bool(((out.sum(1) - 1).abs() < 1e-3).all())
    return out.clamp_min(1e-30).log() if probabilities else out


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def targeted_dlr(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The targeted DLR loss (to maximise): -(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2), z_(i) the i-th largest
    logit. Scale-free, so a model that multiplies or squashes its logits cannot flatten it. With three classes
    z_(4) does not exist and z_(3) stands for both; with two, the loss would be a constant sign (see
    `targets_for`)."""
    top = logits.sort(1, descending=True).values
    third, fourth = min(2, top.shape[1] - 1), min(3, top.shape[1] - 1)
    spread = top[:, 0] - 0.5 * (top[:, third] + top[:, fourth]) + 1e-12
    gap = logits.gather(1, y[:, None])[:, 0] - logits.gather(1, target[:, None])[:, 0]
    return -gap / spread


def targets_for(requested: int, classes: int) -> int:
    """APGD-T's runs for a model with `classes` outputs: one per runner-up class, none for two classes, where
    the only target is the other class, which APGD-CE already attacks, and the targeted DLR loss is a constant."""
    return min(requested, classes - 1) if classes >= 3 else 0


def apgd(
    loss_fn: LossFn,
    x: torch.Tensor,
    eps: torch.Tensor,
    steps: int,
    norm: str = "linf",
    generator: torch.Generator | None = None,
    leave: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD from a random start: (adversarial images, whether each is a success).

    loss_fn(x_rows, rows) -> (per-image loss to maximise, per-image success or None); `rows` are the indices
    of the batch's images that x_rows holds (so it can pick their labels or targets). A success (classifiers:
    misclassified) leaves the batch when `leave`, and its first successful iterate is kept; without a success
    signal each image keeps its highest-loss iterate.
    """
    n = len(x)
    x = x.detach()
    best, best_loss = x.clone(), torch.full((n,), -math.inf, device=x.device)
    success = torch.zeros(n, dtype=torch.bool, device=x.device)
    rows = torch.arange(n, device=x.device)
    ball = Ball(norm, x, eps.to(x.device, x.dtype).expand(n) if eps.dim() == 0 else eps.to(x.device, x.dtype))
    state = _State(ball, rows, x, steps)
    adv = ball.random_start(generator)
    prev = adv
    marks = set(checkpoints(steps))
    last_mark = 0
    for i in range(steps + 1):
        grad, loss, hit = _loss_and_grad(loss_fn, adv, state.rows)
        _keep(best, best_loss, success, state.rows, adv, loss, hit)
        state.record(loss, adv, grad)
        if i == steps:
            break
        if hit is not None and leave and bool(hit.any()):
            keep = ~hit
            if not bool(keep.any()):
                break
            state = state.take(keep)
            adv, prev, grad = adv[keep], prev[keep], grad[keep]
        if i in marks:
            state.checkpoint(i - last_mark)
            last_mark = i
            adv, grad = state.restart(adv, grad)
            prev = adv
        z = state.ball.project(state.ball.ascend(adv, grad, state.step))
        a = 1.0 if i == 0 else MOMENTUM
        adv, prev = state.ball.project(adv + a * (z - adv) + (1 - a) * (adv - prev)), adv
    return best, success


class _State:
    """Per image still attacked: its ball, step size, best loss (and where), and the checkpoint record."""

    def __init__(self, ball: Ball, rows: torch.Tensor, x: torch.Tensor, steps: int):
        n = len(rows)
        self.ball, self.rows = ball, rows
        self.step = 2 * ball.eps.flatten().clone()
        self.best_loss = torch.full((n,), -math.inf, device=x.device)
        self.best_x, self.best_grad = x.clone(), torch.zeros_like(x)
        self.rises = torch.zeros(n, device=x.device)  # steps since the last checkpoint whose loss rose
        self.last_loss = torch.full((n,), -math.inf, device=x.device)
        self.best_at_mark = torch.full((n,), -math.inf, device=x.device)
        self.halved_at_mark = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.halve = torch.zeros(n, dtype=torch.bool, device=x.device)

    def take(self, keep: torch.Tensor) -> _State:
        out = object.__new__(_State)
        out.ball, out.rows = self.ball.take(keep), self.rows[keep]
        for name in ("step", "best_loss", "best_x", "best_grad", "rises", "last_loss", "best_at_mark"):
            setattr(out, name, getattr(self, name)[keep])
        out.halved_at_mark, out.halve = self.halved_at_mark[keep], self.halve[keep]
        return out

    def record(self, loss: torch.Tensor, adv: torch.Tensor, grad: torch.Tensor) -> None:
        self.rises += (loss > self.last_loss).float()
        self.last_loss = loss
        better = loss > self.best_loss
        self.best_loss = torch.where(better, loss, self.best_loss)
        self.best_x[better], self.best_grad[better] = adv[better].detach(), grad[better]

    def checkpoint(self, length: int) -> None:
        """Halve the step where the loss rose in too few steps, or where the step was kept at the last
        checkpoint and the best loss has not improved since."""
        oscillating = self.rises < RHO * length
        stalled = ~self.halved_at_mark & (self.best_loss <= self.best_at_mark)
        self.halve = oscillating | stalled
        self.step = torch.where(self.halve, self.step / 2, self.step)
        self.halved_at_mark, self.best_at_mark = self.halve, self.best_loss.clone()
        self.rises.zero_()

    def restart(self, adv: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images whose step just halved go back to their best point and its gradient."""
        h = self.halve
        return torch.where(h.reshape(_norm_shape(adv)), self.best_x, adv), torch.where(
            h.reshape(_norm_shape(grad)), self.best_grad, grad
        )


def _loss_and_grad(loss_fn: LossFn, adv: torch.Tensor, rows: torch.Tensor):
    """(input gradient, per-image loss, success) with one forward and one backward. A model whose output does not
    depend on its input through autograd (a detached or non-differentiable input layer) gives a zero gradient."""
    adv = adv.detach().requires_grad_(True)
    with torch.enable_grad():
        loss, hit = loss_fn(adv, rows)
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss.sum(), adv, allow_unused=True)
        else:
            grad = None
    grad = torch.zeros_like(adv) if grad is None else grad
    return grad.detach(), loss.detach(), None if hit is None else hit.detach()


def _keep(best, best_loss, success, rows, adv, loss, hit) -> None:
    """Rows `rows` of best / best_loss / success, in place: a first success wins, else the highest loss."""
    if hit is not None:
        take = ~success[rows] & (hit | (loss > best_loss[rows]))
        success[rows] |= hit
    else:
        take = loss > best_loss[rows]
    chosen = rows[take]
    best[chosen] = adv[take].detach()
    best_loss[chosen] = loss[take]
