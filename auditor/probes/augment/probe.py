"""`augment`: which shifts of the input break the model, and how fast it degrades as they grow.

The 15 ImageNet-C corruptions (Hendrycks & Dietterich 2019) at severities 1-5, plus
geometric (rotation, translation, scale, flip) and photometric (hue, saturation, gamma)
shifts, all applied batch-wise on the device (corruptions/, shifts.py).
Geometric shifts move the references with the image (masks warped, boxes moved), so a
detector is not blamed for an object that left the frame.

Metrics per shift and severity: the task's metric (accuracy, mIoU, mAP50) and
`flip_rate`, the share of the clean prediction that changes (label-free). `relative@SHIFT`
is the mean over severities of shifted / clean metric; `score` the mean of those over the
ImageNet-C corruptions. With a reference (another model's results.json, or the paper's
AlexNet errors for 1000-class classifiers) the corruption error relative to it: `ce@C`,
`mce` (and `relative_mce` where both clean metrics are known), as defined in the paper.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from difflib import get_close_matches

import numpy as np
import torch

from auditor.models.base import TASKS
from auditor.probes.augment.corruptions import CORRUPTIONS, REFERENCE_SIZE
from auditor.probes.augment.shifts import FAMILY_ORDER, SHIFTS
from auditor.probes.base import Context, Probe
from auditor.results import Finding, ProbeResult
from auditor.tasks import predict_all, task_of

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
METRIC_LABELS = {"accuracy": "accuracy", "miou": "mIoU", "map50": "mAP50"}
UNHURT = 0.95  # a shift whose relative metric stays above this is not worth a finding of its own


class AugmentProbe(Probe):
    name = "augment"
    template = "probes/augment.html.j2"
    report_order = 30
    description = "ImageNet-C corruptions x 5 severities, geometric and photometric shifts: metric, flip rate, mCE"
    tasks = TASKS
    # accuracy/miou/map50 (clean_ and @SHIFT) and relative@: higher is better; ce@ and mce are error ratios
    lower_is_better = ("flip_rate", "ce", "mce", "relative_mce")

    @dataclass
    class Params:
        shifts: tuple[str, ...] = ()  # names from `SHIFTS`; empty: all that apply to the model's channels
        severities: tuple[int, ...] = (1, 2, 3, 4, 5)
        scale: float = 0.0  # spatial parameters x scale; 0: min(H, W) / 224 (the published values at 224 px)
        reference: str = "auto"  # results.json of another model, "alexnet", "none"; auto: alexnet for 1000 classes

        def __post_init__(self):
            unknown = [n for n in self.shifts if n not in SHIFTS]
            if unknown:
                hint = get_close_matches(unknown[0], list(SHIFTS), n=1)
                raise ValueError(
                    f"unknown shift {', '.join(unknown)}"
                    + (f" (did you mean {hint[0]}?)" if hint else "")
                    + f"; known: {', '.join(SHIFTS)}"
                )
            if any(not 1 <= int(s) <= 5 for s in self.severities) or not self.severities:
                raise ValueError(f"severities must lie in 1..5, got {', '.join(map(str, self.severities)) or 'none'}")
            if self.scale < 0:
                raise ValueError("scale must be positive (0: the image size / 224)")

    def run(self, ctx: Context) -> ProbeResult:
        p = self.params
        adapter, data = ctx.adapter, ctx.data
        shifts = self._shifts(adapter.channels)
        severities = sorted(set(p.severities))
        h, w = adapter.input_size
        scale = p.scale or min(h, w) / REFERENCE_SIZE
        ops = task_of(adapter.task)
        kind = ops.metric

        clean_pred = predict_all(ctx.adapter, ctx.data, ops, ctx.batch_size, ctx.device)
        reference = ops.reference(data, clean_pred)
        clean_ref = ops.as_reference(clean_pred)
        clean = ops.score(clean_pred, reference, adapter) if data.labelled else 1.0
        example = self._example_index(ctx, ops, clean_pred, reference)

        variants = [(s, lv) for s in shifts for lv in (severities if len(s.levels) == 5 else [1])]
        n_batches = -(-len(data) // ctx.batch_size)
        bar = ctx.progress(len(variants) * n_batches, self.name)
        values: dict[str, dict[int, float]] = {s.name: {} for s in shifts}
        flips: dict[str, dict[int, float]] = {s.name: {} for s in shifts}
        shown: dict[str, list] = {s.name: [] for s in shifts}
        for shift, level in variants:
            g = torch.Generator(device=ctx.device).manual_seed(_seed(ctx.seed, shift.name, level))
            preds, refs, cleans = [], [], []
            for b in range(n_batches):
                sl = slice(b * ctx.batch_size, (b + 1) * ctx.batch_size)
                x, _ = data.batch(sl, ctx.device)
                with torch.no_grad():
                    shifted, affine = shift.apply(x, level, g, scale)
                    pred = ops.predict(adapter, shifted)
                ref_b, clean_b = ops.take(reference, sl), ops.take(clean_ref, sl)
                if affine is not None:  # the references follow the image (they live on the CPU)
                    affine = affine.cpu()
                    ref_b, clean_b = ops.warp(ref_b, affine, (h, w)), ops.warp(clean_b, affine, (h, w))
                preds.append(pred)
                refs.append(ref_b)
                cleans.append(clean_b)
                if sl.start <= example < sl.start + len(x):
                    j = example - sl.start
                    # copies: a view would keep the whole batch alive for every variant
                    out_j = ops.take(pred, slice(j, j + 1))[0]
                    out_j = {k: v.clone() for k, v in out_j.items()} if isinstance(out_j, dict) else out_j.clone()
                    shown[shift.name].append((shift.levels[level - 1], shifted[j].detach().cpu().clone(), out_j))
                bar.update(1)
            pred_all, ref_all, clean_all = ops.concat(preds), ops.concat(refs), ops.concat(cleans)
            values[shift.name][level] = ops.score(pred_all, ref_all, adapter)
            flips[shift.name][level] = 1.0 - ops.agreement(pred_all, clean_all).mean().item()
        bar.close()

        metrics: dict[str, float | None] = {}
        if data.labelled:
            metrics[f"clean_{kind}"] = clean
        rows = []
        for shift in shifts:
            levels = sorted(values[shift.name])
            for lv in levels:
                metrics[f"{kind}@{shift.name}:{lv}"] = values[shift.name][lv]
                metrics[f"flip_rate@{shift.name}:{lv}"] = flips[shift.name][lv]
            relative = _relative([values[shift.name][lv] for lv in levels], clean)
            metrics[f"relative@{shift.name}"] = relative
            rows.append(
                {
                    "shift": shift.name,
                    "family": shift.family,
                    "imagenet_c": shift.imagenet_c,
                    "cells": [
                        {
                            "level": shift.levels[lv - 1],
                            "value": values[shift.name][lv],
                            "flip": flips[shift.name][lv],
                            "ratio": values[shift.name][lv] / clean if clean > 0 else None,
                        }
                        for lv in levels
                    ],
                    "relative": relative,
                }
            )
        corruption_rel = [r["relative"] for r in rows if r["imagenet_c"] and r["relative"] is not None]
        score = float(np.mean([min(max(v, 0.0), 1.0) for v in corruption_rel])) if corruption_rel else None
        ce_notes = self._corruption_errors(values, clean, kind, severities, adapter, data.labelled)
        metrics.update(ce_notes[0])

        rows.sort(key=lambda r: r["relative"] if r["relative"] is not None else 2.0)
        label = METRIC_LABELS[kind] if data.labelled else "agreement with the clean prediction"
        artifacts, captions = self._galleries(ctx, shifts, shown, clean_pred, example, ops, reference)
        skipped = [
            s.name
            for s in SHIFTS.values()
            if s.colour_only and adapter.channels == 1 and (not p.shifts or s.name in p.shifts)
        ]
        details = {
            "rows": rows,
            "metric": label,
            "clean": clean,
            "label_free": not data.labelled,
            "severities": severities,
            "scale": scale,
            "size": [h, w],
            "reference": ce_notes[1],
            "skipped": skipped,
            "example": example,
            "captions": captions,
        }
        findings = self._findings(rows, clean, label, scale, data.labelled, skipped, ce_notes)
        return ProbeResult(
            status="ok",
            score=score,
            metrics=metrics,
            findings=tuple(findings),
            artifacts=tuple(artifacts),
            details=details,
        )

    def _shifts(self, channels: int):
        names = list(self.params.shifts) or list(SHIFTS)
        chosen = [SHIFTS[n] for n in names if not (SHIFTS[n].colour_only and channels == 1)]
        if not chosen:
            raise ValueError("augment.shifts: every shift asked for needs colour, and the model sees one channel")
        return chosen

    def _example_index(self, ctx, ops, clean_pred, reference) -> int:
        """A seeded pick among the images the model gets most right (and, for detectors, that have objects)."""
        agree = ops.agreement(clean_pred, reference).double()
        if ctx.adapter.task == "detect":
            agree = agree * torch.tensor([float(len(r) > 0) for r in reference], dtype=torch.float64)
        best = torch.nonzero(agree >= agree.max()).flatten()
        g = torch.Generator().manual_seed(ctx.seed)
        return int(best[torch.randint(len(best), (1,), generator=g)])

    def _corruption_errors(self, values, clean, kind, severities, adapter, labelled):
        """(metrics, description, note) of the corruption error against the reference, if any."""
        ref = self.params.reference.strip()
        if ref == "auto":
            ref = "alexnet" if adapter.task == "classify" and adapter.num_classes == 1000 else "none"
        if ref.lower() == "none" or not labelled:
            return {}, None, None
        corruptions = [c for c in CORRUPTIONS if c in values]
        out: dict[str, float | None] = {}
        if ref.lower() == "alexnet":
            if kind != "accuracy" or severities != [1, 2, 3, 4, 5]:
                return {}, None, "mCE against AlexNet needs accuracy at all five severities; not computed"
            for c in corruptions:
                err = float(np.mean([1 - values[c][s] for s in severities]))
                out[f"ce@{c}"] = err / ALEXNET_ERRORS[c]
            described = "AlexNet's ImageNet-C errors (Hendrycks & Dietterich 2019)"
        else:
            from auditor.results import load

            loaded = load(ref)
            other = loaded.probes.get(self.name)
            if other is None or other.status != "ok":
                raise ValueError(f"augment.reference={ref}: that results.json has no finished augment probe")
            theirs = other.metrics
            their_clean = theirs.get(f"clean_{kind}")
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
            described = f"{loaded.model.get('name', '?')} ({ref})"
        ces = [v for k, v in out.items() if k.startswith("ce@") and v is not None]
        if ces:
            out["mce"] = float(np.mean(ces))
        return out, described, None

    def _findings(self, rows, clean, label, scale, labelled, skipped, ce_notes) -> list[Finding]:
        findings = []
        if not labelled:
            findings.append(
                Finding(
                    "info",
                    "label-free data: the clean prediction is the reference, so the metric is "
                    "the share of the prediction a shift leaves unchanged",
                )
            )
        if clean <= 0:
            findings.append(
                Finding("high", f"the model scores 0 {label} on the clean images; shift figures mean nothing", key=True)
            )
            return findings
        scored = [r for r in rows if r["relative"] is not None]
        hurt = [r for r in scored if r["relative"] < UNHURT][:3]
        for n, r in enumerate(hurt):
            worst = min(r["cells"], key=lambda c: c["value"])
            rel = r["relative"]
            sev = "high" if rel < 0.5 else "medium" if rel < 0.8 else "low"
            findings.append(
                Finding(
                    sev,
                    f"{r['shift']} ({r['family']}) at {worst['level']} cuts {label} from "
                    f"{clean:.1%} to {worst['value']:.1%}; over its severities the model keeps "
                    f"{rel:.0%} of its clean {label}",
                    key=n == 0,
                )
            )
        if scored and not hurt:
            findings.append(
                Finding(
                    "low",
                    f"no shift tested costs more than {1 - UNHURT:.0%} of the clean {label} on "
                    f"average over its severities (least kept: {scored[0]['shift']}, "
                    f"{scored[0]['relative']:.0%})",
                    key=True,
                )
            )
        if abs(scale - 1.0) > 1e-6:
            findings.append(
                Finding(
                    "info",
                    f"spatial corruption parameters scaled by {scale:.3g} (the images are not "
                    f"{REFERENCE_SIZE} px), so severities mean the same relative degradation",
                )
            )
        if skipped:
            findings.append(Finding("info", f"{', '.join(skipped)} not run: the model sees one channel"))
        metrics, described, note = ce_notes
        if note:
            findings.append(Finding("info", note))
        if "mce" in metrics:
            findings.append(
                Finding(
                    "info",
                    f"mCE {metrics['mce']:.1%} relative to {described}; below 100% means fewer "
                    "errors under corruption than the reference",
                )
            )
        return findings

    def _galleries(self, ctx, shifts, shown, clean_pred, example, ops, reference):
        """One figure per family: a row per shift, the example image clean and at each severity."""
        from auditor.figures import draw_shift_examples

        x, _ = ctx.data.batch(slice(example, example + 1), "cpu")
        clean_out = ops.take(clean_pred, slice(example, example + 1))[0]
        artifacts, captions = [], {}
        for family in FAMILY_ORDER:
            rows = [(s.name, shown[s.name]) for s in shifts if s.family == family and shown[s.name]]
            if not rows:
                continue
            path, rel = ctx.artifact(f"examples_{family}.png")
            draw_shift_examples(rows, (x[0], clean_out), ctx.adapter, path)
            artifacts.append(rel)
            captions[rel] = (
                f"{family.capitalize()}: image {example} of the set, clean and at each severity, with the "
                "model's output"
                + (" (classes that differ from the clean prediction in red)" if ctx.adapter.task == "classify" else "")
            )
        return artifacts, captions


def _relative(values: list[float], clean: float) -> float | None:
    if clean <= 0 or not values:
        return None
    return float(np.mean([v / clean for v in values]))


def _seed(seed: int, name: str, level: int) -> int:
    """A stable seed per (run seed, shift, severity): the same draws whatever else runs or in which order."""
    return (seed * 1_000_003 + zlib.crc32(f"{name}:{level}".encode())) % 2**63
