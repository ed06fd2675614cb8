"""Corruption error relative to a reference model, as Hendrycks & Dietterich (2019) define it.

CE@c = sum over severities of the model's error under corruption c / the same sum for the reference;
mCE is the mean of the CEs; relative mCE compares the drops from the clean metric instead. The reference
is another run's results.json (any task, its augment metrics at the same severities), or AlexNet's
published ImageNet-C errors (top-1, all five severities: classifiers scored by accuracy).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from auditor.errors import AuditError
from auditor.probes.augment.corruptions import CORRUPTIONS
from auditor.results import load

# Top-1 error of AlexNet on ImageNet-C, mean over severities 1-5 (Hendrycks & Dietterich 2019; the
# normalisation used for mCE in the authors' repository, hendrycks/robustness).
ALEXNET_ERRORS = dict(
    zip(
        CORRUPTIONS,
        (
            0.886428,
            0.894468,
            0.922640,
            0.819880,
            0.826268,
            0.785948,
            0.798360,
            0.866816,
            0.826572,
            0.819324,
            0.564592,
            0.853204,
            0.646056,
            0.717840,
            0.606500,
        ),
    )
)


class CorruptionErrors(NamedTuple):
    metrics: dict[str, float | None]  # ce@CORRUPTION, mce, relative_mce
    described: str | None  # what the errors are relative to, in prose; None: not computed
    note: str | None  # why they were not computed, when the reference asked for cannot give them


NOT_COMPUTED = CorruptionErrors({}, None, None)


def check_reference(reference: str) -> None:
    """ValueError unless `reference` is auto, alexnet, none or a results.json with a finished augment probe."""
    ref = reference.strip()
    if ref == "auto" or ref.lower() in ("alexnet", "none"):  # as the probe reads them
        return
    try:
        other = load(ref).probes.get("augment")
    except AuditError as exc:
        raise ValueError(f"reference: {exc}; else auto, alexnet or none") from None
    if other is None or other.status != "ok":
        raise ValueError(f"reference={ref}: that results.json has no finished augment probe")


def corruption_errors(values, clean: float, kind: str, severities: list[int], reference: str) -> CorruptionErrors:
    """CE per corruption run and mCE relative to `reference` ("alexnet" or a results.json).

    values: corruption -> severity -> the model's `kind` metric (accuracy, miou, map50) under it.
    """
    corruptions = [c for c in CORRUPTIONS if c in values]
    if reference.lower() == "alexnet":
        if kind != "accuracy" or severities != [1, 2, 3, 4, 5]:
            return CorruptionErrors({}, None, "mCE against AlexNet needs accuracy at all five severities; not computed")
        out: dict[str, float | None] = {}
        for c in corruptions:
            err = float(np.mean([1 - values[c][s] for s in severities]))
            out[f"ce@{c}"] = err / ALEXNET_ERRORS[c]
        described = "AlexNet's ImageNet-C errors (Hendrycks & Dietterich 2019)"
    else:
        out, described = _against_run(values, clean, kind, severities, corruptions, reference)
    ces = [v for k, v in out.items() if k.startswith("ce@") and v is not None]
    if ces:
        out["mce"] = float(np.mean(ces))
    return CorruptionErrors(out, described, None)


def _against_run(values, clean, kind, severities, corruptions, ref: str) -> tuple[dict[str, float | None], str]:
    """(ce@ and relative_mce metrics, description) against another run's augment metrics."""
    loaded = load(ref)
    other = loaded.probes.get("augment")
    if other is None or other.status != "ok":
        raise ValueError(f"augment.reference={ref}: that results.json has no finished augment probe")
    theirs = other.metrics
    their_clean = theirs.get(f"clean_{kind}")
    out: dict[str, float | None] = {}
    rel_terms = []
    for c in corruptions:
        keys = [f"{kind}@{c}:{s}" for s in severities]
        if any(theirs.get(k) is None for k in keys):
            raise ValueError(f"augment.reference={ref}: no {kind} for {c} at severities {severities}")
        their_err = sum(1 - theirs[k] for k in keys)
        mine = sum(1 - values[c][s] for s in severities)
        out[f"ce@{c}"] = mine / their_err if their_err > 0 else None
        if their_clean is not None:
            denominator = sum(their_clean - theirs[k] for k in keys)
            if denominator > 0:
                rel_terms.append(sum(clean - values[c][s] for s in severities) / denominator)
    if rel_terms and len(rel_terms) == len(corruptions):
        out["relative_mce"] = float(np.mean(rel_terms))
    return out, f"{loaded.model.get('name', '?')} ({ref})"
