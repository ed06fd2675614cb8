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
    out += _min_eps(d) + _confusion(d) + _disappearance(d) + _gradient_free(d)
    for c in d.checks or []:
        if c.flagged:
            out.append(Finding("high" if d.masked else "medium", f"suspect result ({c.name}): {c.text}", key=True))
    if d.masked is not None:
        m = d.masked
        converged = (
            f"its last success came at query {m.last_success} of {m.queries}"
            if m.last_success is not None
            else "it broke none of them"
        )
        text = (
            f"gradient masking suspected: the gradient-free Square attack then ran on every image the gradient attacks "
            f"left, at every ε, with {m.queries} queries each, and broke {sum(m.broken)} more ({converged}); the "
            "figures above are that worst case"
        )
        out.append(Finding("high", text, key=True))
    return out


def _headline(d: AttacksDetails) -> Finding:
    """The smallest ε that halves the metric (high when it is the smallest of the grid), else the largest ε."""
    grid, values, robust = [r.eps for r in d.rows], [r.eps_value for r in d.rows], [r.robust for r in d.rows]
    clean, label = d.clean, d.metric
    order = np.argsort(values)
    half = [i for i in order if robust[i] < 0.5 * clean]
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
        in_levels = "" if "/" in str(grid[i]) or d.norm != "linf" else f" ({values[i] * 255:.3g}/255)"
        return Finding(
            sev,
            f"{_attack(d)} at ε={grid[i]}{in_levels} cuts {label} from {clean:.1%} to {robust[i]:.1%} "
            "(below half of clean)",
            key=True,
        )
    i = order[-1]
    return Finding(
        "low",
        f"at the largest budget tested, ε={grid[i]}, {_attack(d)} keeps {label} at {robust[i]:.1%} of {clean:.1%} clean",
        key=True,
    )


def _attack(d: AttacksDetails) -> str:
    """What the rows measure, in words: the worst case over the ensemble (runs saved before it: PGD)."""
    return f"the worst case over {' + '.join(d.members.values())}" if d.members else "PGD"


def _gradient_free(d: AttacksDetails) -> list[Finding]:
    """How much the gradient-free member added, where it added anything (it rarely should)."""
    added = [(r.eps, r.broken_first.get("square", 0)) for r in d.rows if r.broken_first.get("square", 0)]
    if not added or d.masked is not None:
        return []
    where = ", ".join(f"{n} at ε={e}" for e, n in added)
    return [Finding("info", f"the gradient-free Square attack broke images the gradient attacks left: {where}")]


def _min_eps(d: AttacksDetails) -> list[Finding]:
    m = d.min_eps
    if m is None or not m.n:
        return []
    if m.median_censored:
        text = (
            f"more than half of {m.n} images withstand every attack at the largest ε "
            f"({m.largest:.4g}): the median minimal ε is at least that"
        )
        return [Finding("low", text, key=True)]
    levels = f", {m.median * 255:.1f}/255" if d.norm == "linf" else ""
    text = f"half of {m.n} images break at ε ≤ {m.median:.4g} (median minimal ε{levels})"
    return [Finding("info", text, key=True)]


def _confusion(d: AttacksDetails) -> list[Finding]:
    if d.per_class is None or not d.per_class.confusions:
        return []
    c = d.per_class.confusions[0]
    text = (
        f"under attack at ε={d.per_class.eps}, {c.share:.0%} of class '{c.true}' becomes '{c.pred}', "
        "the most common confusion"
    )
    return [Finding("info", text)]


def _disappearance(d: AttacksDetails) -> list[Finding]:
    """The ε at which the attacks make most of the objects found clean disappear (detectors)."""
    rates = [(r.eps, r.disappearance) for r in d.rows if isinstance(r, ObjectsEpsRow) and r.disappearance is not None]
    if not rates:
        return []
    g, v = max(rates, key=lambda t: t[1])
    text = f"the attacks at ε={g} make {v:.0%} of the objects found on clean images disappear"
    return [Finding("medium" if v >= 0.5 else "info", text, key=True)]
