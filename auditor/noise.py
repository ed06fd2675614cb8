"""Whether a metric's change between two runs is beyond noise: the paired test where both runs audited the
same images (equal data digests, and both keep the metric's per-image outcomes or shared-resample
replicates), else the two 95% intervals compared (unpaired), else unknown."""

from __future__ import annotations

from auditor.results import Results
from auditor.stats import Change, paired_change, unpaired_change


def same_images(base: Results, new: Results) -> bool:
    a, b = base.data.get("digest"), new.data.get("digest")
    return a is not None and a == b


def metric_change(base: Results, new: Results, probe: str | None, metric: str) -> Change | None:
    """The test of `probe.metric` from BASE to NEW; None for the run's own score (no interval of its own) or a
    metric missing from either run."""
    if probe is None:
        return None
    pa, pb = base.probes.get(probe), new.probes.get(probe)
    if pa is None or pb is None or pa.status != "ok" or pb.status != "ok":
        return None
    va = pa.score if metric == "score" else pa.metrics.get(metric)
    vb = pb.score if metric == "score" else pb.metrics.get(metric)
    if va is None or vb is None:
        return None
    if same_images(base, new):
        paired = paired_change(va, vb, pa.paired.get(metric), pb.paired.get(metric))
        if paired is not None:
            return paired
    return unpaired_change(va, vb, pa.intervals.get(metric), pb.intervals.get(metric))
