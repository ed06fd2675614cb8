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
from auditor.probes.base import Context, Figures, Probe, Skip, not_meaningful, unmeasured
from auditor.probes.patch import figures as patch_figures
from auditor.probes.patch.details import HALF, PatchDetails, PatchView, Target, first_lower, scale_label
from auditor.probes.patch.geometry import ROTATION, SIDE_JITTER
from auditor.probes.patch.goals import GOALS, Examples, Goal, Scored, Scoring, goal_for
from auditor.probes.patch.target import CANDIDATES, candidates, screen
from auditor.probes.patch.training import Restarts, Training, judging_rows, split, strongest
from auditor.results import Finding, ProbeResult
from auditor.stats import Derived, Estimates
from auditor.tasks import predict_all, task_of

MIN_IMAGES = 2  # one to train on, one held out
NO_BETTER = 0.05  # a trained patch within this of a random one has found no attack worth the name


def one_minus(success: torch.Tensor) -> torch.Tensor:
    """The score from the success at score_scale (a value or its replicates): 1 - success, clipped to [0, 1]."""
    return (1 - success).clamp(0, 1)


@dataclass
class Trained:
    """What a run has made: the two sides of the split, the patches, their target, and their held-out scores."""

    train: Goal
    test: Goal
    patches: dict[str, list[torch.Tensor]]  # mode -> one patch per scale
    target: Target | None
    scored: Scored
    training: Training
    restarts: dict[str, Restarts]  # mode -> every restart and its training success


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
        restarts: int = 0  # patches trained per scale, the strongest on training images kept; 0: the task's default
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
            for name in ("steps", "rows", "restarts", "gallery"):
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
        if len(ctx.data) < MIN_IMAGES:
            raise Skip(
                f"patch needs at least {MIN_IMAGES} images (one to train on, one held out); this run has "
                f"{len(ctx.data)}"
            )
        scales = sorted(set(p.scales) | {p.score_scale})
        checked = ctx.degeneracy()
        if checked.empty is not None:
            per_scale = [f"{m}@scale={s:g}" for s in scales for m in goal.scale_metrics]
            return unmeasured(checked.empty, dict.fromkeys([*goal.run_metrics, *per_scale, "min_scale_for_half"]))
        clean = predict_all(ctx.adapter, ctx.data, ctx.task, ctx.batch_size, ctx.device)
        # the held-out split and the placements it is scored at are fixed (SPLIT_SEED, EVAL_SEED): only the
        # training draws follow the run's seed, so two runs score on the same test, image by image
        train, test = (goal.from_data(ctx, idx, clean) for idx in split(len(ctx.data), p.held_out))
        steps, rows = p.steps or goal.default_steps, min(p.rows or goal.default_rows, ctx.batch_size)
        restarts = p.restarts or goal.default_restarts
        training = Training(steps, rows, p.lr, ctx.generator(), ctx.batch_size, None, restarts, goal.judge_images)
        training.bar = bar = ctx.progress(self._work(goal, train, test, scales, training), self.name)
        runs, target = self._train(train, test, scales, training)
        patches = {mode: r.best() for mode, r in runs.items()}
        scored = test.evaluate(patches, scales, Scoring(ctx.batch_size, bar))
        bar.close()
        result = self._result(ctx, Trained(train, test, patches, target, scored, training, runs))
        return not_meaningful(result, checked.rates_not_meaningful, list(result.metrics))

    def _work(self, goal: type[Goal], train: Goal, test: Goal, scales: list[float], training: Training) -> int:
        """The progress bar's total: training steps and judged batches, the target's screening, scored batches."""
        judged = -(-len(judging_rows(train, training.judge)) // training.batch_size)
        per_mode = (training.steps + judged * len(scales)) * training.restarts
        screening = CANDIDATES * (training.steps + judged) if goal.targeted and not self.params.target.strip() else 0
        scored = -(-len(test) // training.batch_size) * len(scales) * (len(goal.modes) + 1)
        return per_mode * len(goal.modes) + screening + scored

    def _train(self, train: Goal, test: Goal, scales: list[float], training: Training):
        """Each mode's restarts in turn; the targeted ones after the untargeted, which choose their target."""
        runs: dict[str, Restarts] = {}
        target = None
        for mode in train.modes:
            if mode == "targeted":
                target = self._target(train, runs["untargeted"], scales, training)
                train.target = test.target = target.index
            runs[mode] = strongest(train.adapter, train, scales, mode, training)
        return runs, target

    def _target(self, train: Goal, untargeted: Restarts, scales: list[float], training: Training) -> Target:
        """patch.target, else the candidate class (target.py) a screening patch at score_scale reaches best."""
        adapter = train.adapter
        index = self._given_target(adapter)
        if index is not None:
            return Target(index, adapter.class_names[index], "given")
        classes = candidates(adapter, train, untargeted, scales, training) or [0]
        rows = max(1, training.rows // len(scales))  # what one scale gets a step in the full run
        screened = screen(adapter, train, classes, self.params.score_scale, rows, training)
        index = max(screened, key=screened.__getitem__)  # the first among equals: the most voted
        names = adapter.class_names
        return Target(index, names[index], "auto", {names[c]: round(v, 6) for c, v in screened.items()})

    def _result(self, ctx: Context, run: Trained) -> ProbeResult:
        scored = run.scored
        metrics = dict(scored.metrics)
        reached = [s for s, v in zip(scored.scales, scored.success) if v is not None and v >= HALF]
        metrics["min_scale_for_half"] = reached[0] if reached else None
        findings = self._findings(run, metrics["min_scale_for_half"])
        details = self._details(ctx, run, metrics["min_scale_for_half"])
        est = Estimates(len(run.test))  # every metric over the held-out images, on the same resamples
        for key, estimate in scored.estimates.items():
            est.add(key, estimate)
        est.add("score", Derived(one_minus, [scored.estimates[f"success_rate@scale={self.params.score_scale:g}"]]))
        intervals = est.intervals()
        figures, details.gradcam = self._figures(ctx, run, intervals)
        details.captions = figures.captions
        at_score = scored.success[scored.scales.index(self.params.score_scale)]
        return ProbeResult(
            status="ok",
            score=None if at_score is None else min(max(1.0 - at_score, 0.0), 1.0),
            metrics=metrics,
            findings=tuple(findings),
            artifacts=tuple(figures.artifacts),
            details=details.to_dict(),
            intervals=intervals,
            paired=est.paired(),
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
            restarts=run.training.restarts,
            judged_on=next(iter(run.restarts.values())).judged_on,
            restart_success={mode: r.spread() for mode, r in run.restarts.items()},
        )

    def _findings(self, run: Trained, min_scale: float | None) -> list[Finding]:
        scored, train, test, steps = run.scored, run.train, run.test, run.training.steps
        findings = test.findings(scored, self.params.score_scale)
        findings += self._versus_random(scored, test.modes[-1], steps)
        if run.target is not None:
            how = (
                "given by patch.target"
                if run.target.given
                else "chosen among the classes the untargeted patches turned most training images into, as the one "
                "a screening patch turned most training images into"
                + "".join(f"; {name!r}: {v:.0%}" for name, v in (run.target.screened or {}).items())
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

    def _figures(self, ctx: Context, run: Trained, intervals: dict) -> tuple[Figures, bool]:
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
            "Success rate against patch size on held-out images (solid, with 95% intervals); dotted: a random patch "
            "of the same size at the same places",
            patch_figures.draw_success,
            scored,
            test.wording,
            intervals,
        )
        ask = Examples(scored.scales.index(p.score_scale), p.gallery, ctx.seed, "gradcam" in ctx.probes)
        gallery = None if p.gallery == 0 or not ctx.main else test.gallery(run.patches, scored, ask)  # rank 0 draws
        if gallery is not None:
            cam = gallery.cams is not None
            caption = (
                f"Held-out images without and with the {scale_label(p.score_scale)} "
                f"patch ({test.wording.area} area), and the model's output"
                + (f"; below, Grad-CAM of {test.wording.cam} on both (the gradcam probe is in this run)" if cam else "")
            )
            figures.save("examples.png", caption, patch_figures.draw_examples, ctx.adapter, gallery)
        path, rel = ctx.artifact("patches.pt")  # the patches themselves, to print or to test a defence with
        if ctx.main:
            torch.save(
                {mode: {f"{s:g}": t.cpu() for s, t in zip(scored.scales, ts)} for mode, ts in run.patches.items()}, path
            )
        figures.artifacts.append(rel)
        return figures, cam
