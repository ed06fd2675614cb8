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
`mce` (and `relative_mce` where both clean metrics are known), as defined in the paper
(corruption_error.py). Figures in figures.py; the details' types in details.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from difflib import get_close_matches

import numpy as np
import torch

from auditor import distributed
from auditor.models.base import TASKS
from auditor.probes.augment.corruption_error import NOT_COMPUTED, CorruptionErrors, check_reference, corruption_errors
from auditor.probes.augment.corruptions import REFERENCE_SIZE
from auditor.probes.augment.details import AugmentDetails, ShiftCell, ShiftRow
from auditor.probes.augment.estimates import augment_estimates
from auditor.probes.augment.figures import draw_galleries
from auditor.probes.augment.shifts import SHIFTS, Shift
from auditor.probes.base import Context, Probe, not_meaningful, unmeasured
from auditor.results import Finding, ProbeResult
from auditor.stats import Estimate, Ratio
from auditor.tasks import predict_all, task_of

METRIC_LABELS = {"accuracy": "accuracy", "miou": "mIoU", "map50": "mAP50", "mask_map50": "mask mAP50"}
UNHURT = 0.95  # a shift whose relative metric stays above this is not worth a finding of its own


@dataclass
class Sweep:
    """What the passes over the data under every (shift, severity) measured, by shift name and severity."""

    values: dict[str, dict[int, float]]  # the task's metric
    flips: dict[str, dict[int, float]]  # share of the clean prediction that changed
    shown: dict[str, list]  # [(level label, shifted example image, the model's output on it)], one per severity
    side: dict[str, dict[int, dict[str, float]]]  # the task's side metrics the reference allows (mask_map50)
    estimates: dict[str, dict[int, dict[str, Estimate]]]  # the metrics and flip_rate as estimates over the images


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
            if not math.isfinite(self.scale) or self.scale < 0:
                raise ValueError(f"scale must be a number >= 0 (0: the image size / 224), got {self.scale}")
            check_reference(self.reference)

    @classmethod
    def view(cls, details: dict) -> AugmentDetails:
        return AugmentDetails.from_dict(details)

    def check(self, adapter) -> None:
        self._shifts(adapter.channels)  # a colour-only choice on a one-channel model: say so before anything runs

    def run(self, ctx: Context) -> ProbeResult:
        p, adapter, data, task = self.params, ctx.adapter, ctx.data, ctx.task
        shifts = self._shifts(adapter.channels)
        severities = sorted(set(p.severities))
        h, w = adapter.input_size
        scale = p.scale or min(h, w) / REFERENCE_SIZE
        kind = task.metric

        clean_pred = predict_all(adapter, data, task, ctx.batch_size, ctx.device)
        reference = task.reference(data, clean_pred)
        clean_all = task.scores(clean_pred, reference, adapter) if data.labelled else {}
        checked = ctx.degeneracy()
        if checked.empty is not None:  # nothing for a shift to change: no shift is run
            return _nothing(shifts, severities, kind, clean_all, checked.empty)
        clean = clean_all[kind] if data.labelled else 1.0
        example = self._example_index(ctx, clean_pred, reference)
        sweep = self._sweep(ctx, shifts, severities, scale, clean_pred, reference, example)

        side_clean = {m: v for m, v in clean_all.items() if m != kind}
        metrics: dict[str, float | None] = {f"clean_{kind}": clean} if data.labelled else {}
        metrics.update({f"clean_{m}": v for m, v in side_clean.items()})
        rows = _rows(shifts, sweep, clean, kind, metrics)
        corruption_rel = [r.relative for r in rows if r.imagenet_c and r.relative is not None]
        score = float(np.mean([min(max(v, 0.0), 1.0) for v in corruption_rel])) if corruption_rel else None
        ce_notes = self._corruption_errors(sweep.values, clean, kind, severities, adapter, data.labelled)
        metrics.update(ce_notes.metrics)

        rows.sort(key=lambda r: r.relative if r.relative is not None else 2.0)
        label = METRIC_LABELS[kind] if data.labelled else "agreement with the clean prediction"
        clean_out = task.take(clean_pred, slice(example, example + 1))[0]
        figures = draw_galleries(ctx, shifts, sweep.shown, clean_out, example)
        skipped = [
            s.name
            for s in SHIFTS.values()
            if s.colour_only and adapter.channels == 1 and (not p.shifts or s.name in p.shifts)
        ]
        details = AugmentDetails(
            rows=rows,
            metric=label,
            clean=clean,
            label_free=not data.labelled,
            severities=severities,
            scale=scale,
            size=[h, w],
            reference=ce_notes.described,
            skipped=skipped,
            example=example,
            captions=figures.captions,
            side_labels={m: _side_label(m, data.labelled) for m in _side_names(sweep)},
            side_clean=side_clean,
        )
        findings = self._findings(rows, clean, label, scale, data.labelled, skipped, ce_notes)
        clean_estimates = task.estimates(clean_pred, reference, adapter) if data.labelled else {}
        corruptions = [s.name for s in shifts if s.imagenet_c]
        estimates = augment_estimates(len(data), kind, clean_estimates, sweep.estimates, corruptions)
        result = ProbeResult(
            status="ok",
            score=score,
            metrics=metrics,
            findings=tuple(findings),
            artifacts=tuple(figures.artifacts),
            details=details.to_dict(),
            **estimates.to_dict(),
        )
        return not_meaningful(result, checked.rates_not_meaningful, list(metrics))

    def _shifts(self, channels: int) -> list[Shift]:
        names = list(self.params.shifts) or list(SHIFTS)
        chosen = [SHIFTS[n] for n in names if not (SHIFTS[n].colour_only and channels == 1)]
        if not chosen:
            raise ValueError(
                f"shifts={','.join(names)}: every shift asked for needs colour, and the model sees one channel"
            )
        return chosen

    def _example_index(self, ctx, clean_pred, reference) -> int:
        """A seeded pick among the images the model gets most right (and, for detectors, that have objects)."""
        agree = ctx.task.agreement(clean_pred, reference).double() * ctx.task.has_objects(reference)
        best = torch.nonzero(agree >= agree.max()).flatten()
        g = torch.Generator().manual_seed(ctx.seed)
        return int(best[torch.randint(len(best), (1,), generator=g)])

    def _sweep(self, ctx, shifts, severities, scale, clean_pred, reference, example) -> Sweep:
        """Every shift at every severity asked for (one level for a shift that has one) over the whole set."""
        clean_ref = ctx.task.as_reference(clean_pred)
        variants = [(s, lv) for s in shifts for lv in (severities if len(s.levels) == 5 else [1])]
        n_batches = -(-len(ctx.data) // ctx.batch_size)
        bar = ctx.progress(len(variants) * n_batches, self.name)
        names = [s.name for s in shifts]
        sweep = Sweep(*({n: [] if field == "shown" else {} for n in names} for field in Sweep.__dataclass_fields__))
        for shift, level in variants:
            values, flip, shown, estimates = _measure(ctx, shift, level, scale, reference, clean_ref, example, bar)
            sweep.estimates[shift.name][level] = estimates
            sweep.values[shift.name][level] = values.pop(ctx.task.metric)
            sweep.side[shift.name][level] = values
            sweep.flips[shift.name][level] = flip
            if shown is not None:
                sweep.shown[shift.name].append(shown)
        bar.close()
        return sweep

    def _corruption_errors(self, values, clean, kind, severities, adapter, labelled) -> CorruptionErrors:
        """(metrics, description, note) of the corruption error against the reference, if any."""
        ref = self.params.reference.strip()
        if ref == "auto":
            ref = "alexnet" if task_of(adapter).imagenet_classes(adapter.num_classes) else "none"
        if ref.lower() == "none" or not labelled:
            return NOT_COMPUTED
        return corruption_errors(values, clean, kind, severities, ref)

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
        # rows as results.json keeps them are read too
        findings += _shift_findings(
            [r if isinstance(r, ShiftRow) else ShiftRow.from_dict(r) for r in rows], clean, label
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


def _measure(ctx: Context, shift: Shift, level: int, scale: float, reference, clean_ref, example: int, bar):
    """One shift at one severity over the whole set, batch by batch: (the task's metric and side metrics by name,
    flip rate, and (level label, shifted image, output) of the example image)."""
    task, adapter, data = ctx.task, ctx.adapter, ctx.data
    h, w = adapter.input_size
    g = torch.Generator(device=ctx.device)

    def one_batch(b: int):
        """Batch b shifted, its predictions and references; its draws seeded from (run seed, shift, severity, b)
        alone, so any rank of a sharded run may compute it."""
        g.manual_seed(ctx.seed_for(shift.name, level, b))
        sl = slice(b * ctx.batch_size, (b + 1) * ctx.batch_size)
        x, _ = data.batch(sl, ctx.device)
        with torch.no_grad():
            shifted, affine = shift.apply(x, level, g, scale)
            pred = task.predict(adapter, shifted)
        ref_b, clean_b = task.take(reference, sl), task.take(clean_ref, sl)
        if affine is not None:  # the references follow the image (they live on the CPU)
            affine = affine.cpu()
            ref_b, clean_b = task.warp(ref_b, affine, (h, w)), task.warp(clean_b, affine, (h, w))
        shown = None
        if sl.start <= example < sl.start + len(x):
            j = example - sl.start
            # copies: a view would keep the whole batch alive for every variant
            out_j = task.take(pred, slice(j, j + 1))[0]
            out_j = {k: v.clone() for k, v in out_j.items()} if isinstance(out_j, dict) else out_j.clone()
            shown = (shift.levels[level - 1], shifted[j].detach().cpu().clone(), out_j)
        bar.update(1)
        return pred, ref_b, clean_b, shown

    batches = distributed.chunked(one_batch, -(-len(data) // ctx.batch_size), bar, 1)
    preds, refs, cleans, shown_at = zip(*batches)
    shown = next((s for s in shown_at if s is not None), None)
    pred_all, ref_all, clean_all = task.concat(list(preds)), task.concat(list(refs)), task.concat(list(cleans))
    flips = 1.0 - task.agreement(pred_all, clean_all)
    estimates = {**task.estimates(pred_all, ref_all, adapter), "flip_rate": Ratio.of_values(flips)}
    return task.scores(pred_all, ref_all, adapter), flips.mean().item(), shown, estimates


def _nothing(shifts: list[Shift], severities: list[int], kind: str, clean: dict, why: str) -> ProbeResult:
    """The result when the reference holds nothing for a shift to change: the clean figures (labelled), the rest
    null, under the keys a measured run has."""
    metrics: dict[str, float | None] = {f"clean_{m}": v for m, v in clean.items()}
    for shift in shifts:
        for lv in severities if len(shift.levels) == 5 else [1]:
            metrics.update({f"{kind}@{shift.name}:{lv}": None, f"flip_rate@{shift.name}:{lv}": None})
        metrics[f"relative@{shift.name}"] = None
    return unmeasured(why, metrics, keep=tuple(f"clean_{m}" for m in clean))


def _rows(shifts: list[Shift], sweep: Sweep, clean: float, kind: str, metrics: dict) -> list[ShiftRow]:
    """A row per shift, in the order run; adds KIND@SHIFT:SEVERITY, flip_rate@SHIFT:SEVERITY and
    relative@SHIFT to `metrics`."""
    rows = []
    for shift in shifts:
        values, flips, side = sweep.values[shift.name], sweep.flips[shift.name], sweep.side[shift.name]
        levels = sorted(values)
        for lv in levels:
            metrics[f"{kind}@{shift.name}:{lv}"] = values[lv]
            metrics.update({f"{m}@{shift.name}:{lv}": v for m, v in side[lv].items()})
            metrics[f"flip_rate@{shift.name}:{lv}"] = flips[lv]
        relative = _relative([values[lv] for lv in levels], clean)
        metrics[f"relative@{shift.name}"] = relative
        cells = [
            ShiftCell(shift.levels[lv - 1], values[lv], flips[lv], values[lv] / clean if clean > 0 else None, side[lv])
            for lv in levels
        ]
        rows.append(ShiftRow(shift.name, shift.family, shift.imagenet_c, cells, relative))
    return rows


def _shift_findings(rows: list[ShiftRow], clean: float, label: str) -> list[Finding]:
    """The (up to three) worst shifts that cost more than 1 - UNHURT of the clean metric, or that none did."""
    findings = []
    scored = [r for r in rows if r.relative is not None]
    hurt = [r for r in scored if r.relative < UNHURT][:3]
    for n, r in enumerate(hurt):
        worst = min(r.cells, key=lambda c: c.value)
        rel = r.relative
        sev = "high" if rel < 0.5 else "medium" if rel < 0.8 else "low"
        findings.append(
            Finding(
                sev,
                f"{r.shift} ({r.family}) at {worst.level} cuts {label} from "
                f"{clean:.1%} to {worst.value:.1%}; over its severities the model keeps "
                f"{rel:.0%} of its clean {label}",
                key=n == 0,
            )
        )
    if scored and not hurt:
        findings.append(
            Finding(
                "low",
                f"no shift tested costs more than {1 - UNHURT:.0%} of the clean {label} on "
                f"average over its severities (least kept: {scored[0].shift}, "
                f"{scored[0].relative:.0%})",
                key=True,
            )
        )
    return findings


def _side_names(sweep: Sweep) -> list[str]:
    """The side metrics measured (the same under every shift: they depend on the reference alone)."""
    return sorted({m for per_level in sweep.side.values() for got in per_level.values() for m in got})


def _side_label(metric: str, labelled: bool) -> str:
    return METRIC_LABELS[metric] + ("" if labelled else " against the clean prediction")


def _relative(values: list[float], clean: float) -> float | None:
    if clean <= 0 or not values:
        return None
    return float(np.mean([v / clean for v in values]))
