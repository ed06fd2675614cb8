"""The augment probe's metrics as estimates over the images (auditor/stats.py): their 95% intervals, and what
a paired test of two runs on the same images needs. Every variant's estimates share the bootstrap resamples,
so `relative@SHIFT` and the score get theirs from the same draws as the figures they are made of."""

from __future__ import annotations

import torch

from auditor.stats import Constant, Derived, Estimate, Estimates


def _relative(clean: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
    """The mean over severities of shifted / clean (as the probe's `_relative`)."""
    return torch.stack([v / clean for v in values]).mean(0)


def _score(*relatives: torch.Tensor) -> torch.Tensor:
    """The mean over the ImageNet-C corruptions of relative@, each clipped to [0, 1] (as the probe's score)."""
    return torch.stack([r.clamp(0.0, 1.0) for r in relatives]).mean(0)


def augment_estimates(
    n: int, kind: str, clean: dict[str, Estimate], variants: dict[str, dict[int, dict[str, Estimate]]], corruptions
) -> Estimates:
    """clean: the clean estimates by metric name (empty label-free); variants: shift -> severity -> estimates by
    metric name, with `flip_rate` among them; corruptions: the ImageNet-C shifts' names (the score's)."""
    est = Estimates(n)
    for name, e in clean.items():
        est.add(f"clean_{name}", e)
    base = clean.get(kind, Constant(1.0 if not clean else None))
    relatives = {}
    for shift, levels in variants.items():
        for level, measured in sorted(levels.items()):
            for name, e in measured.items():
                est.add(f"{name}@{shift}:{level}", e)
        values = [measured[kind] for _, measured in sorted(levels.items()) if kind in measured]
        if values and len(values) == len(levels):
            relatives[shift] = est.add(f"relative@{shift}", Derived(_relative, [base, *values]))
    scored = [relatives[s] for s in corruptions if s in relatives]
    if scored and all(r.value is not None for r in scored):
        est.add("score", Derived(_score, scored))
    return est
