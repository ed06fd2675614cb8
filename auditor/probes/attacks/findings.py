"""The `attacks` probe's findings, each sentence written once, from its typed details."""

from __future__ import annotations

import numpy as np

from auditor.probes.attacks.details import AttacksDetails, ObjectsEpsRow
from auditor.results import Finding


def findings(d: AttacksDetails) -> list[Finding]:
    """Label-free note, the headline over the grid, the minimal ε, the top confusion, disappearing
    objects, and one finding per flagged self-check."""
    out = []
    if d.label_free:
        out.append(
            Finding(
                "info",
                "label-free data: the clean prediction is the reference, so the metric is "
                "the share of the prediction an attack cannot change",
            )
        )
    out.append(_headline(d))
    out += _min_eps(d) + _confusion(d) + _disappearance(d)
    for c in d.checks or []:
        if c.flagged:
            out.append(Finding("medium", f"suspect result ({c.name}): {c.text}", key=True))
    return out


def _headline(d: AttacksDetails) -> Finding:
    """The smallest ε that halves the metric (high when it is the smallest of the grid), else the largest ε."""
    grid, values, pgd = [r.eps for r in d.rows], [r.eps_value for r in d.rows], [r.pgd for r in d.rows]
    clean, label = d.clean, d.metric
    order = np.argsort(values)
    half = [i for i in order if pgd[i] < 0.5 * clean]
    if clean <= 0:
        return Finding(
            "high",
            f"the model scores 0 {label} on the clean images: check the data, the "
            "class order and the weights; robustness figures mean nothing here",
            key=True,
        )
    if half:
        i = half[0]
        sev = "high" if i == order[0] else "medium"
        in_levels = "" if "/" in str(grid[i]) else f" ({values[i] * 255:.3g}/255)"
        return Finding(
            sev,
            f"PGD at ε={grid[i]}{in_levels} cuts {label} from {clean:.1%} to {pgd[i]:.1%} (below half of clean)",
            key=True,
        )
    i = order[-1]
    return Finding(
        "low",
        f"at the largest budget tested, ε={grid[i]}, PGD keeps {label} at {pgd[i]:.1%} of {clean:.1%} clean",
        key=True,
    )


def _min_eps(d: AttacksDetails) -> list[Finding]:
    m = d.min_eps
    if m is None or not m.n:
        return []
    if m.median_censored:
        text = (
            f"more than half of {m.n} images withstand PGD at the largest ε "
            f"({m.largest:.4g}): the median minimal ε is at least that"
        )
        return [Finding("low", text, key=True)]
    text = f"half of {m.n} images break at ε ≤ {m.median:.4g} (median minimal ε, {m.median * 255:.1f}/255)"
    return [Finding("info", text, key=True)]


def _confusion(d: AttacksDetails) -> list[Finding]:
    if d.per_class is None or not d.per_class.confusions:
        return []
    c = d.per_class.confusions[0]
    text = (
        f"under PGD at ε={d.per_class.eps}, {c.share:.0%} of class '{c.true}' becomes '{c.pred}', "
        "the most common confusion"
    )
    return [Finding("info", text)]


def _disappearance(d: AttacksDetails) -> list[Finding]:
    """The ε at which PGD makes most of the objects found clean disappear (detectors)."""
    rates = [(r.eps, r.disappearance) for r in d.rows if isinstance(r, ObjectsEpsRow) and r.disappearance is not None]
    if not rates:
        return []
    g, v = max(rates, key=lambda t: t[1])
    text = f"PGD at ε={g} makes {v:.0%} of the objects found on clean images disappear"
    return [Finding("medium" if v >= 0.5 else "info", text, key=True)]
