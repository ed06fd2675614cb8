"""The patch Probe: its parameters, the run (split, train, score on held-out images), findings, figures, details.

What differs by task lives in the Goal (goals/) that `goal_for(ctx.task)` picks; see the package
docstring for the papers and the departures from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from auditor.errors import did_you_mean
from auditor.probes.base import Context, Figures, Probe
from auditor.probes.patch import figures as patch_figures
from auditor.probes.patch.details import HALF, PatchDetails, PatchView, Target, first_lower, scale_label
from auditor.probes.patch.geometry import ROTATION, SIDE_JITTER
from auditor.probes.patch.goals import GOALS, Examples, Goal, Scored, Scoring, goal_for
from auditor.probes.patch.training import Training, choose_target, split, train_patches
from auditor.results import Finding, ProbeResult
from auditor.tasks import predict_all, task_of

NO_BETTER = 0.05  # a trained patch within this of a random one has found no attack worth the name


@dataclass
class Trained:
    """What a run has made: the two sides of the split, the patches, their target, and their held-out scores."""

    train: Goal
    test: Goal
    patches: dict[str, list[torch.Tensor]]  # mode -> one patch per scale
    target: Target | None
    scored: Scored
    training: Training


class PatchProbe(Probe):
    name = "patch"
    template = "probes/patch.html.j2"
    report_order = 20
    description = "adversarial patches at several sizes, trained on one split and scored on held-out images"
    tasks = tuple(GOALS)
    # clean_/patched_ recall and miou and min_scale_for_half: higher is better
    lower_is_better = ("success_rate", "untargeted_success_rate", "recall_drop", "miou_drop")

    @dataclass
    class Params:
        scales: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)  # patch area / image area (detectors: / box area)
        score_scale: float = 0.1  # score = 1 - success rate at this scale (added to the scales if missing)
        target: str = ""  # classifiers: a class name or index; empty: chosen by the untargeted patch
        steps: int = 0  # Adam steps per patch; 0: the task's default (the Goal's default_steps)
        rows: int = 0  # images per step, shared by the scales; 0: the task's default; at most --batch-size
        lr: float = 0.2  # Adam, on pixel values in [0, 1] (0.05 left shapes-yolov8n's patch near a random one)
        held_out: float = 0.5  # share of the data set aside for scoring, never trained on
        gallery: int = 6  # examples in the report

        def __post_init__(self):
            """Every value checked here, so that a bad --set is one line (exit 2) before any probe runs; the
            target's class is checked against the model in PatchProbe.check."""
            bad = [s for s in (*self.scales, self.score_scale) if not 0 < s < 1]
            if bad or not self.scales:
                raise ValueError(
                    f"scales and score_scale are shares of the area in (0, 1), got {bad[0] if bad else 'no scales'}"
                )
            if not 0 < self.held_out < 1:
                raise ValueError(f"held_out must lie in (0, 1), got {self.held_out}")
            for name in ("steps", "rows", "gallery"):
                if getattr(self, name) < 0:
                    raise ValueError(f"{name} must be 0 (automatic) or more, got {getattr(self, name)}")
            if not (self.lr > 0 and math.isfinite(self.lr)):
                raise ValueError(f"lr must be a positive number, got {self.lr}")
            if not isinstance(self.target, str):
                raise ValueError(f"target must be a class name or index, got {self.target!r}")

    @classmethod
    def view(cls, details: dict[str, Any]) -> PatchView:
        goal = goal_for(task_of(details["task"]))
        return PatchView.of(PatchDetails.from_dict(details, goal.row), goal.per_object)

    def skip_reason(self, adapter) -> str | None:
        reason = super().skip_reason(adapter)
        if reason is not None:
            return reason
        goal = goal_for(task_of(adapter))
        if goal.needs is not None and not adapter.supports(goal.needs):
            return goal.unsupported
        return None

    def check(self, adapter) -> None:
        self._given_target(adapter)

    def _given_target(self, adapter) -> int | None:
        """The class index of patch.target (a name or an index); None when the probe chooses."""
        text = self.params.target.strip()
        if not text:
            return None
        if not goal_for(task_of(adapter)).targeted:
            raise ValueError(f"target: targeted patches are for classifiers; this model is a {adapter.task} model")
        names = adapter.class_names
        if text in names:
            return names.index(text)
        if text.isdigit() and int(text) < len(names):
            return int(text)
        raise ValueError(
            f"target: {text!r} is neither a class name{did_you_mean(text, names)} nor an index below {len(names)}"
        )

    def run(self, ctx: Context) -> ProbeResult:
        p, goal = self.params, goal_for(ctx.task)
        if len(ctx.data) < 2:
            raise ValueError(f"patch needs at least 2 images (one to train on, one held out), got {len(ctx.data)}")
        scales = sorted(set(p.scales) | {p.score_scale})
        clean = predict_all(ctx.adapter, ctx.data, ctx.task, ctx.batch_size, ctx.device)
        train, test = (goal.from_data(ctx, idx, clean) for idx in split(len(ctx.data), p.held_out, ctx.seed))
        steps, rows = p.steps or goal.default_steps, min(p.rows or goal.default_rows, ctx.batch_size)
        chunks = -(-len(test) // ctx.batch_size)
        bar = ctx.progress(steps * len(goal.modes) + chunks * len(scales) * (len(goal.modes) + 1), self.name)
        training = Training(steps, rows, p.lr, ctx.generator(), ctx.batch_size, bar)
        patches, target = self._train(train, test, scales, training)
        # Untrained patches of the same sizes: what covering that much of the image does by itself.
        baseline = [torch.rand(t.shape, generator=training.generator, device=t.device) for t in patches[goal.modes[0]]]
        scored = test.evaluate(patches, baseline, scales, Scoring(ctx.seed, ctx.batch_size, bar))
        bar.close()
        return self._result(ctx, Trained(train, test, patches, target, scored, training))

    def _train(self, train: Goal, test: Goal, scales: list[float], training: Training):
        """Each mode's patches in turn; the targeted ones after the untargeted, which choose their target."""
        patches: dict[str, list[torch.Tensor]] = {}
        target = None
        for mode in train.modes:
            if mode == "targeted":
                target = self._target(train, patches["untargeted"][-1], scales[-1], training)
                train.target = test.target = target.index
            patches[mode] = train_patches(train.adapter, train, scales, mode, training)
        return patches, target

    def _target(self, train: Goal, patch: torch.Tensor, scale: float, training: Training) -> Target:
        """patch.target, else the class the untargeted patch (at `scale`) drifts most training images to."""
        adapter = train.adapter
        index, choice = self._given_target(adapter), "given"
        if index is None:
            index, choice = choose_target(adapter, train, patch, scale, training), "auto"
        return Target(index, adapter.class_names[index], choice)

    def _result(self, ctx: Context, run: Trained) -> ProbeResult:
        scored = run.scored
        metrics = dict(scored.metrics)
        reached = [s for s, v in zip(scored.scales, scored.success) if v is not None and v >= HALF]
        metrics["min_scale_for_half"] = reached[0] if reached else None
        findings = self._findings(run, metrics["min_scale_for_half"])
        details = self._details(ctx, run, metrics["min_scale_for_half"])
        figures, details.gradcam = self._figures(ctx, run)
        details.captions = figures.captions
        at_score = scored.success[scored.scales.index(self.params.score_scale)]
        return ProbeResult(
            status="ok",
            score=None if at_score is None else min(max(1.0 - at_score, 0.0), 1.0),
            metrics=metrics,
            findings=tuple(findings),
            artifacts=tuple(figures.artifacts),
            details=details.to_dict(),
        )

    def _details(self, ctx: Context, run: Trained, min_scale: float | None) -> PatchDetails:
        """The details but the figures' (captions, and whether the examples carry Grad-CAM)."""
        return PatchDetails(
            task=ctx.task.name,
            scales=[scale_label(s) for s in run.scored.scales],
            columns=run.scored.columns,
            rows=run.scored.rows,
            what=run.test.wording,
            score_scale=scale_label(self.params.score_scale),
            min_scale_for_half=min_scale,
            train_images=len(run.train),
            trained_on=len(run.train.candidates),
            held_out_images=len(run.test),
            steps=run.training.steps,
            images_per_step=run.training.rows,
            lr=self.params.lr,
            rotation=ROTATION,
            side_jitter=list(SIDE_JITTER),
            label_free=not ctx.data.labelled,
            modes=list(run.test.modes),
            target=run.target,
            captions={},
            gradcam=False,
        )

    def _findings(self, run: Trained, min_scale: float | None) -> list[Finding]:
        scored, train, test, steps = run.scored, run.train, run.test, run.training.steps
        findings = test.findings(scored, self.params.score_scale)
        findings += self._versus_random(scored, test.modes[-1], steps)
        if run.target is not None:
            how = (
                "given by patch.target"
                if run.target.given
                else "chosen as the class the untargeted patch turned most training images into"
            )
            findings.append(Finding("info", f"target class {run.target.name!r} ({how})"))
        if min_scale is None:
            findings.append(
                Finding(
                    "info",
                    f"no patch size tested (up to {scale_label(scored.scales[-1])} of the "
                    f"{test.wording.area}) reaches {HALF:.0%} {first_lower(test.wording.success)} on held-out "
                    "images: min_scale_for_half is null",
                )
            )
        if len(train.candidates) == 0:
            findings.append(
                Finding(
                    "medium",
                    f"none of the {len(train)} training images has an object to put a "
                    "patch on: the patches stayed untrained",
                )
            )
        findings.append(
            Finding(
                "info",
                f"patches trained on {len(train)} images ({steps} Adam steps of {run.training.rows} "
                f"images shared by {len(scored.scales)} sizes) and scored on {len(test)} held-out "
                "images they never saw",
            )
        )
        return findings

    def _versus_random(self, scored: Scored, mode: str, steps: int) -> list[Finding]:
        """Say so when the trained patch barely beats a random one: the loss is then occlusion, not an attack."""
        trained, random = scored.rows[scored.scales.index(self.params.score_scale)].modes()[mode]
        if trained is None or random is None or trained - random >= NO_BETTER:
            return []
        how = "no better" if trained <= random else "little better"
        return [
            Finding(
                "medium",
                f"the trained patch does {how} than a random patch of the same size "
                f"({trained:.0%} vs {random:.0%} success): what the model loses there is occlusion "
                f"rather than an attack; more steps (--set patch.steps={2 * steps}) may find a "
                "stronger patch",
                key=True,
            )
        ]

    def _figures(self, ctx: Context, run: Trained) -> tuple[Figures, bool]:
        """The patches, success against size, the examples (with Grad-CAM when gradcam runs), and patches.pt."""
        p, test, scored = self.params, run.test, run.scored
        figures, cam = Figures(ctx), False
        figures.save(
            "patches.png",
            "The trained patches at their own pixel size (enlarged), each with its success rate on held-out images",
            patch_figures.draw_patches,
            run.patches,
            scored,
        )
        figures.save(
            "success.png",
            "Success rate against patch size on held-out images (solid); dotted: a random patch "
            "of the same size at the same places",
            patch_figures.draw_success,
            scored,
            test.wording,
        )
        ask = Examples(scored.scales.index(p.score_scale), p.gallery, ctx.seed, "gradcam" in ctx.probes)
        gallery = None if p.gallery == 0 else test.gallery(run.patches, scored, ask)
        if gallery is not None:
            cam = gallery.cams is not None
            caption = (
                f"Held-out images without and with the {scale_label(p.score_scale)} "
                f"patch ({test.wording.area} area), and the model's output"
                + (f"; below, Grad-CAM of {test.wording.cam} on both (the gradcam probe is in this run)" if cam else "")
            )
            figures.save("examples.png", caption, patch_figures.draw_examples, ctx.adapter, gallery)
        path, rel = ctx.artifact("patches.pt")  # the patches themselves, to print or to test a defence with
        torch.save(
            {mode: {f"{s:g}": t.cpu() for s, t in zip(scored.scales, ts)} for mode, ts in run.patches.items()}, path
        )
        figures.artifacts.append(rel)
        return figures, cam
