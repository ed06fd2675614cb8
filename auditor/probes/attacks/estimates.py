"""The attacks probe's metrics as estimates over the images (auditor/stats.py): their 95% intervals, and what
a paired test of two runs on the same images needs."""

from __future__ import annotations

import torch

from auditor.probes.attacks.sweep import Sweep
from auditor.stats import Constant, Derived, Estimate, Estimates, Ratio
from auditor.tasks import Task


def robustness_score(clean: torch.Tensor, *robust: torch.Tensor) -> torch.Tensor:
    """The probe's score: the mean over the grid of robust / clean, each capped at 1; 0 where clean is 0."""
    ratios = torch.stack([torch.clamp(r / clean, max=1.0) for r in robust])
    return torch.where(clean > 0, ratios.mean(0), torch.zeros_like(clean))


def attack_estimates(task: Task, s: Sweep, norm: str, rows: list, label_free: bool, adapter) -> Estimates:
    """Every metric of `AttacksProbe._metrics` that is a rate or a mean over images, and the score; rows: the
    probe's rows (EpsRow), one per ε of the grid in grid order."""
    kind, est = task.metric, Estimates(len(s.reference))
    side_names = list(s.side)

    def measured(pred) -> dict[str, Estimate]:
        return task.estimates(pred, s.reference, adapter)

    clean = measured(s.clean_pred) if not label_free else {}
    robust = [measured(p) for p in s.robust_pred]
    if kind not in clean and not label_free or any(kind not in r for r in robust):
        return est  # the task has no estimates: no intervals
    for name in (kind, *side_names):
        if not label_free and name in clean:
            est.add(f"clean_{name}", clean[name])
        for r, row in zip(robust, rows):
            if name in r:
                est.add(f"robust_{name}@{norm}={row.eps}", r[name])
    for preds, prefix in ((s.first_pred, "apgd"), (s.fgsm_pred, "fgsm" if norm == "linf" else "fgm")):
        for pred, row in zip(preds, rows):
            est.add(f"{prefix}_{kind}@{norm}={row.eps}", measured(pred)[kind])
    if task.attack_disappearance:
        found_clean = task.found(s.clean_pred, s.reference)
        for pred, row in zip(s.robust_pred, rows):
            lost = [(c & ~a).sum() for c, a in zip(found_clean, task.found(pred, s.reference))]
            est.add(
                f"disappearance_rate@{norm}={row.eps}",
                Ratio(
                    torch.tensor(lost, dtype=torch.float64),
                    torch.tensor([c.sum() for c in found_clean]),
                    proportion=True,
                ),
            )
    base = clean[kind] if not label_free else Constant(1.0)
    est.add("score", Derived(robustness_score, [base, *(r[kind] for r in robust)]))
    return est
