"""Detectors: a patch that hides the objects it sits on (Thys, Van Ranst & Goedemé 2019): pasted on every
object, it pushes down the scores of the detector's candidates for that object."""

from __future__ import annotations

import math

import torch

from auditor.models.base import BOX_TARGETS, SHOW_CONF
from auditor.probes.patch.details import DetectRow, Wording, scale_label
from auditor.probes.patch.figures import BOXES, Gallery
from auditor.probes.patch.geometry import SIDE_JITTER, Objects, on_objects, pair_iou, tile_extent
from auditor.probes.patch.goals.base import Examples, Goal, Scored, Shown, rate, severity
from auditor.results import Finding
from auditor.stats import Derived, Estimate, Ratio
from auditor.targets import best_box_targets
from auditor.tasks import Task

MATCH_IOU = 0.3  # candidates whose box overlaps an object this much can still report it
HIDE_CONF = 0.1  # such candidates are pushed below this score (shown boxes start at SHOW_CONF)


class DetectGoal(Goal):
    """Objects (ground truth; for label-free data the clean detections) padded to M slots per image."""

    wording = Wording(
        success="Share of found objects hidden",
        area="box",
        axis="share of found objects hidden",
        cam="the most confident clean box (its candidate's class score)",
    )
    modes = ("hide",)
    run_metrics = ("clean_recall",)
    scale_metrics = ("patched_recall", "recall_drop", "success_rate")
    panels = BOXES
    row = DetectRow
    default_steps, default_rows = 120, 16
    per_object = True
    needs = BOX_TARGETS  # the head's candidates (the adapter's `candidates`)
    unsupported = "hiding objects needs a detector whose candidates are read from its head (ultralytics, torchvision)"

    def __init__(self, adapter, images, reference, clean, labelled):
        super().__init__(adapter, images, reference, clean, labelled)
        self.objects = Objects.padded(reference, images.device)
        self.candidates = torch.nonzero(self.valid.any(1)).flatten()  # training needs an object to sit on
        # the largest box sets the tiles' size: read once here, not at every step
        self.largest_area = float(self.objects.areas().max())
        self.found_clean = self._found(clean)

    @property
    def boxes(self) -> torch.Tensor:
        return self.objects.boxes

    @property
    def valid(self) -> torch.Tensor:
        return self.objects.valid

    @staticmethod
    def clean_outputs(task: Task, pred, device):
        """The detections shown (confidence >= SHOW_CONF), on the device."""
        return [{k: v[d["scores"] >= SHOW_CONF].to(device) for k, v in d.items()} for d in pred]

    def patch_sides(self, scales):
        """The patch's resolution: its side on an object of the median box area."""
        median = float(self.objects.areas().median())
        return [max(1, round(math.sqrt(s * median))) for s in scales]

    def place(self, idx, scale, generator, train):
        """One copy per object slot, centred on the object (moved a little while training); absent slots off."""
        extent = tile_extent(math.sqrt(max(scale * self.largest_area, 1)) * (SIDE_JITTER[1] if train else 1))
        return on_objects(self.objects.take(idx), scale, extent, generator, train)

    def loss(self, out, idx, cover, mode):
        """Per image, the mean over its objects of how far their candidates' scores stand above HIDE_CONF."""
        boxes, scores = self.adapter.candidates(out)
        confidence = scores.amax(1)  # YOLOv8's stand-in for objectness
        excess = (torch.logit(confidence, eps=1e-6) - math.log(HIDE_CONF / (1 - HIDE_CONF))).clamp_min(0)
        own = (pair_iou(self.boxes[idx], boxes.detach()) >= MATCH_IOU) & self.valid[idx, :, None]  # R x M x A
        per_object = (excess[:, None, :] * own).sum(-1)
        return per_object.sum(1) / self.valid[idx].sum(1).clamp_min(1)

    def outcome(self, x, cover):
        return self.adapter.predict(x, conf=SHOW_CONF)

    def _found(self, detections: list[dict], rows: torch.Tensor | None = None) -> torch.Tensor:
        """N x M: each object still found (a shown box of its class at IoU >= 0.5), for the images (`rows`, default
        all) in order."""
        valid, reference = self.valid, self.reference
        if rows is not None:
            valid, reference = valid[rows], [reference[i] for i in rows.tolist()]
        found = torch.zeros_like(valid)
        for i, hit in enumerate(self.task.found(detections, reference)):
            found[i, : len(hit)] = hit
        return found

    def _hidden(self, found: torch.Tensor, rows: torch.Tensor) -> Ratio:
        """Objects hidden among those found without a patch, counted per image (images `rows`)."""
        before = self.found_clean[rows]
        return Ratio((before & ~found).sum(1), before.sum(1))

    def success(self, mode, outcome, rows) -> Ratio:
        return self._hidden(self._found(outcome, rows), rows)

    def score(self, runs, scales) -> Scored:
        objects = int(self.valid.sum())
        was_found = self.found_clean
        clean_recall = float(was_found.sum()) / objects if objects else None
        metrics = {"clean_recall": clean_recall}
        per_image, every = self.valid.sum(1), torch.arange(len(self), device=self.valid.device)
        estimates: dict[str, Estimate] = {"clean_recall": Ratio(was_found.sum(1), per_image)}
        rows = []
        for k, (s, side) in enumerate(zip(scales, self.patch_sides(scales))):
            adv, rnd = self._found(runs["hide"][k]), self._found(runs["random"][k])
            recall = estimates[f"patched_recall@scale={s:g}"] = Ratio(adv.sum(1), per_image)
            estimates[f"recall_drop@scale={s:g}"] = Derived(torch.sub, [estimates["clean_recall"], recall])
            estimates[f"success_rate@scale={s:g}"] = self._hidden(adv, every)
            row = DetectRow(
                scale_label(s),
                f"~{side}×{side}",
                clean_recall=clean_recall,
                recall=float(adv.sum()) / objects if objects else None,
                random_recall=float(rnd.sum()) / objects if objects else None,
                hidden=rate(~adv, was_found),
                random_hidden=rate(~rnd, was_found),
            )
            metrics[f"patched_recall@scale={s:g}"] = row.recall
            metrics[f"recall_drop@scale={s:g}"] = None if row.recall is None else clean_recall - row.recall
            metrics[f"success_rate@scale={s:g}"] = row.hidden
            rows.append(row)
        return Scored(
            scales=scales,
            rows=rows,
            columns=[
                "patch area (of each box)",
                "patch px",
                "clean recall",
                "patched recall",
                "random patch recall",
                "found objects hidden",
                "random patch",
            ],
            labels={"hide": "hide objects"},
            metrics=metrics,
            runs=runs,
            estimates=estimates,
        )

    def findings(self, scored, score_scale):
        row: DetectRow = scored.rows[scored.scales.index(score_scale)]
        objects, found = int(self.valid.sum()), int(self.found_clean.sum())
        if row.hidden is None:
            return [
                Finding(
                    "medium",
                    f"nothing to hide: the detector finds none of the {objects} held-out objects without a patch",
                    key=True,
                )
            ]
        return [
            Finding(
                severity(row.hidden),
                f"a patch covering {scale_label(score_scale)} of each object's box hides "
                f"{row.hidden:.0%} of the {found} held-out objects the detector found (recall "
                f"{row.clean_recall:.3f} → {row.recall:.3f}; a random patch of that size hides "
                f"{row.random_hidden:.0%})",
                key=True,
            )
        ]

    def gallery(self, patches, scored, ask: Examples) -> Gallery | None:
        """The held-out images that lose the most objects."""
        if not self.valid.any():
            return None
        lost = (self.found_clean & ~self._found(scored.runs["hide"][ask.k])).sum(1)
        pick = torch.argsort(lost, descending=True, stable=True)[: ask.n].sort().values
        x, cover = self.replay(patches["hide"][ask.k], ask.k, pick)
        with torch.no_grad():
            after = [{key: v.cpu() for key, v in d.items()} for d in self.adapter.predict(x, conf=SHOW_CONF)]
        before = [{key: v.cpu() for key, v in self.clean[i].items()} for i in pick.tolist()]
        found = self.found_clean.sum(1)
        titles = [
            (
                f"{len(b['boxes'])} boxes",
                f"{len(a['boxes'])} boxes; {int(lost[i])} of {int(found[i])} hidden",
                int(lost[i]) > 0,
            )
            for b, a, i in zip(before, after, pick.tolist())
        ]
        shown = Shown(x, cover, before, after, titles, lambda: best_box_targets(self.adapter, self.pixels(pick)))
        return self.as_gallery(pick, shown, ask.with_cam)
