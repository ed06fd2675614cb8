"""Segmenters: a patch pasted anywhere that changes the predicted class of the pixels outside it."""

from __future__ import annotations

import torch

from auditor.metrics import IGNORE_INDEX, iou_counts, mean_iou_score
from auditor.probes.patch.details import SegmentRow, Wording, scale_label
from auditor.probes.patch.figures import MASKS, Gallery
from auditor.probes.patch.goals.base import Examples, Goal, Scored, Shown, severity
from auditor.probes.patch.training import away_from
from auditor.results import Finding
from auditor.stats import Derived, Estimate, MeanIoU
from auditor.targets import mask_targets


class SegmentGoal(Goal):
    wording = Wording(
        success="Relative mIoU drop outside the patch",
        area="image",
        axis="relative mIoU drop outside",
        cam="the main class outside the patch (its clean mask)",
    )
    modes = ("untargeted",)
    run_metrics = ("clean_miou",)
    scale_metrics = ("patched_miou", "miou_drop", "success_rate")
    panels = MASKS
    row = SegmentRow
    default_steps, default_rows = 60, 8

    def loss(self, out, idx, cover, mode):
        outside = 1 - cover[:, 0]
        per_pixel = away_from(out, self.clean[idx])
        return (per_pixel * outside).flatten(1).sum(1) / outside.flatten(1).sum(1).clamp_min(1)

    def outcome(self, x, cover):
        return self.adapter(x).argmax(1), cover[:, 0] > 0  # any pixel the patch touches counts as under it

    def _mious(self, after: torch.Tensor, under: torch.Tensor, rows) -> tuple[MeanIoU, MeanIoU]:
        """mIoU outside the patch of the clean and the patched predictions on images `rows`, per image."""
        outside = self.reference[rows].long().masked_fill(under, IGNORE_INDEX)
        counts = (iou_counts(p, outside, self.num_classes) for p in (self.clean[rows], after))
        return tuple(MeanIoU(inter, union) for inter, union in counts)

    def success(self, mode, outcome, rows) -> Derived:
        """The relative mIoU drop outside the patch (a function of two mIoUs on the same resamples)."""
        return Derived(relative, self._mious(*outcome, rows))

    def score(self, runs, scales) -> Scored:
        reference = self.reference.long()
        metrics = {"clean_miou": mean_iou_score(self.clean, reference, self.num_classes)}
        every = torch.arange(len(self), device=reference.device)
        estimates: dict[str, Estimate] = {"clean_miou": MeanIoU(*iou_counts(self.clean, reference, self.num_classes))}
        rows = []
        for k, (s, side) in enumerate(zip(scales, self.patch_sides(scales))):
            (adv, under), (rnd, _) = runs["untargeted"][k], runs["random"][k]
            before, patched_miou = self._mious(adv, under, every)
            estimates[f"patched_miou@scale={s:g}"] = patched_miou
            estimates[f"miou_drop@scale={s:g}"] = Derived(torch.sub, [before, patched_miou])
            estimates[f"success_rate@scale={s:g}"] = Derived(relative, [before, patched_miou])
            outside = reference.masked_fill(under, 255)  # pixels under the patch are left out of every mIoU
            clean, after, random_after = (mean_iou_score(p, outside, self.num_classes) for p in (self.clean, adv, rnd))
            row = SegmentRow(
                scale_label(s),
                f"{side}×{side}",
                clean_miou=clean,
                miou=after,
                random_miou=random_after,
                changed_outside=float(((adv != self.clean) & ~under).sum() / (~under).sum().clamp_min(1)),
            )
            metrics[f"patched_miou@scale={s:g}"] = after
            metrics[f"miou_drop@scale={s:g}"] = clean - after
            metrics[f"success_rate@scale={s:g}"] = row.success
            rows.append(row)
        return Scored(
            scales=scales,
            rows=rows,
            columns=[
                "patch area",
                "patch px",
                "clean mIoU outside",
                "patched",
                "random patch",
                "pixels changed outside",
            ],
            labels={"untargeted": "outside the patch"},
            metrics=metrics,
            runs=runs,
            estimates=estimates,
        )

    def findings(self, scored, score_scale):
        k = scored.scales.index(score_scale)
        row: SegmentRow = scored.rows[k]
        return [
            Finding(
                severity(row.success),
                f"a patch covering {scale_label(score_scale)} of the image cuts mIoU outside it from "
                f"{row.clean_miou:.3f} to {row.miou:.3f} and changes the class of {row.changed_outside:.0%} of the "
                f"pixels it does not cover (a random patch of that size: mIoU {row.random_miou:.3f})",
                key=True,
            )
        ]

    def gallery(self, patches, scored, ask: Examples) -> Gallery | None:
        """The held-out images whose prediction outside the patch changes most."""
        adv, under = scored.runs["untargeted"][ask.k]
        changed = ((adv != self.clean) & ~under).flatten(1).float().mean(1)
        pick = torch.argsort(changed, descending=True, stable=True)[: ask.n].sort().values
        if len(pick) == 0:
            return None
        x, cover = self.replay(patches["untargeted"][ask.k], ask.k, pick)
        with torch.no_grad():
            after = self.adapter(x).argmax(1)
        titles = [
            ("clean prediction", f"{changed[i]:.0%} of pixels changed", bool(changed[i] > 0)) for i in pick.tolist()
        ]
        shown = Shown(
            x,
            cover,
            list(self.clean[pick].cpu()),
            list(after.cpu()),
            titles,
            lambda: mask_targets(self.clean[pick], under[pick]),
        )
        return self.as_gallery(pick, shown, ask.with_cam)


def relative(clean: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """details.relative_drop on tensors (values or replicates): 1 - after / clean clipped to [0, 1], NaN where the
    clean mIoU is 0."""
    return torch.where(clean > 0, (1 - after / clean).clamp(0, 1), torch.nan)
