"""`attacks`: an attack ensemble over the model's ε grid (L-inf, or L2 for classifiers): per image the worst
case over APGD-CE, APGD-T and the gradient-free Square attack (ensemble.py), the minimal ε per image, and
checks on the attack itself that, when one fails, run Square on everything and make the verdict SUSPECT.

Every image counts in the metric: one that is wrong when clean counts as broken. Label-free data uses
the clean prediction as the reference.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from auditor.data import seeded_subset
from auditor.probes.attacks import figures as figs
from auditor.probes.attacks import gradient_masking as masking
from auditor.probes.attacks.details import (
    ENGINE,
    AttacksDetails,
    ClassRow,
    Confusion,
    EpsRow,
    MaskedRun,
    MinEps,
    ObjectsEpsRow,
    PerClass,
)
from auditor.probes.attacks.engine import LinfAttack
from auditor.probes.attacks.ensemble import ENSEMBLES, NORMS, Budget, Ensemble
from auditor.probes.attacks.estimates import attack_estimates
from auditor.probes.attacks.findings import findings
from auditor.probes.attacks.sweep import Sweep, min_eps, sweep
from auditor.probes.base import Context, Figures, Probe, not_meaningful, unmeasured
from auditor.results import ProbeResult
from auditor.tasks import Task, predict_all, task_of

METRIC_LABELS = {"accuracy": "accuracy", "miou": "mIoU", "map50": "mAP50", "mask_map50": "mask mAP50"}
ONE_STEP = {"linf": "fgsm", "l2": "fgm"}  # the one-step attack's name in the metric keys
CHECKS = ("zero_gradient_share", "nonfinite_gradient_share", "suspect_masking")  # the attack's own, not the model's


def parse_eps(text: str, norm: str = "linf") -> float:
    """'0.1' or '2/255' -> float, checked to be positive (and at most 1 for L-inf: pixel space)."""
    text = str(text).strip()
    num, slash, den = text.partition("/")
    try:
        value = float(num) / float(den) if slash else float(num)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{text!r} is not a number such as 0.03 or a fraction such as 8/255") from None
    if not (math.isfinite(value) and value > 0) or (norm == "linf" and value > 1):
        raise ValueError(
            f"epsilon {text} must lie in (0, 1] (pixel space)"
            if norm == "linf"
            else f"epsilon {text} must be a positive L2 radius (pixel space)"
        )
    return value


def l2_grid(adapter) -> tuple[str, ...]:
    """The default L2 grid: each L-inf budget of the model's grid times sqrt(pixels) / 4, two significant digits.
    A quarter of the L-inf ball's corner distance lands on the radii published for the usual sets (CIFAR-10:
    8/255 -> 0.43, the common 0.5; ImageNet: 4/255 -> 1.5)."""
    pixels = adapter.channels * adapter.input_size[0] * adapter.input_size[1]
    return tuple(f"{parse_eps(e) * math.sqrt(pixels) / 4:.2g}" for e in adapter.epsilons)


def _check_integer(name: str, value: Any, least: int, none_ok: bool = False) -> None:
    """ValueError unless value is an integer >= least (or None where allowed)."""
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        unset = " (or unset)" if none_ok else ""
        raise ValueError(f"{name} must be an integer of at least {least}{unset}, got {value!r}")


class AttacksProbe(Probe):
    name = "attacks"
    template = "probes/attacks.html.j2"
    report_order = 10
    description = (
        "an attack ensemble (APGD-CE, APGD-T, Square; per image the worst case) over an ε grid: accuracy, mIoU or "
        "mAP50 under attack, minimal ε per image, gradient-masking checks"
    )
    tasks = ("classify", "segment", "detect")
    # clean_/robust_/apgd_/fgsm_ accuracy, miou and map50 and median_min_eps: higher is better
    lower_is_better = ("disappearance_rate", "zero_gradient_share", "nonfinite_gradient_share", "suspect_masking")

    @dataclass
    class Params:
        eps: tuple[str, ...] = ()  # budgets in pixel space ('0.1', '2/255'); empty: the model's grid
        norm: str = "linf"  # linf | l2 (classifiers)
        ensemble: str = "standard"  # fast: APGD-CE + APGD-T; standard: + Square
        steps: int | None = None  # APGD iterations per run; None: the task's attack_steps (100 / 20)
        targets: int = 3  # APGD-T: runner-up classes, one APGD run each
        square_queries: int | None = None  # Square's queries per image; None: the task's attack_queries
        # Square's queries when a masking check fails (it then runs on every image at every ε); None: the task's
        masked_queries: int | None = None
        gallery: int = 6  # clean / adversarial / perturbation columns in the report
        # images whose minimal ε is found by bisection (a seeded subset); None: the task's attack_min_eps_images
        # (64 for classifiers, 8 for the detectors and segmenters, whose attack step costs 10-100 times more)
        min_eps_images: int | None = None
        bisect: int | None = None  # bisection rounds inside the grid bracket (bracket / 2**bisect); None: 4 / 2
        check_images: int | None = None  # images for the stronger-attack and unbounded checks; None: 16 / 8; 0 skips

        def __post_init__(self) -> None:
            """Every value checked here, before any probe runs: a bad one is a usage error (exit 2, one line)."""
            if self.norm not in NORMS:
                raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
            if self.ensemble not in ENSEMBLES:
                raise ValueError(f"ensemble must be one of {', '.join(ENSEMBLES)}, got {self.ensemble!r}")
            if isinstance(self.eps, str) or not isinstance(self.eps, tuple | list):
                raise ValueError(f"eps must be a list of budgets such as ['0.1', '2/255'], got {self.eps!r}")
            budgets = {}
            for e in self.eps:
                try:
                    value = parse_eps(e, self.norm)
                except ValueError as exc:
                    raise ValueError(f"eps: {exc}") from None
                if value in budgets:
                    raise ValueError(f"eps {budgets[value]} and {e} are the same budget; give each once")
                budgets[value] = e
            _check_integer("steps", self.steps, 1, none_ok=True)
            _check_integer("targets", self.targets, 1)
            _check_integer("square_queries", self.square_queries, 1, none_ok=True)
            _check_integer("masked_queries", self.masked_queries, 1, none_ok=True)
            _check_integer("gallery", self.gallery, 0)
            _check_integer("min_eps_images", self.min_eps_images, 0, none_ok=True)
            _check_integer("bisect", self.bisect, 0, none_ok=True)
            _check_integer("check_images", self.check_images, 0, none_ok=True)

        def sized(self, task: Task) -> AttacksProbe.Params:
            """These parameters with the automatic sizes filled in for the task."""
            auto = {
                "steps": task.attack_steps,
                "square_queries": task.attack_queries,
                "masked_queries": task.attack_masked_queries,
                "min_eps_images": task.attack_min_eps_images,
                "check_images": task.attack_check_images,
                "bisect": task.attack_bisect_rounds,
            }
            return dataclasses.replace(self, **{k: v for k, v in auto.items() if getattr(self, k) is None})

    def check(self, adapter) -> None:
        if self.params.norm not in task_of(adapter).attack_norms:
            raise ValueError(f"norm {self.params.norm} is for classifiers; {adapter.task} models are attacked in linf")

    @classmethod
    def view(cls, details: dict[str, Any]) -> AttacksDetails:
        """The typed details (probes/attacks.html.j2 reads their named fields)."""
        return AttacksDetails.from_dict(details)

    def run(self, ctx: Context) -> ProbeResult:
        p = self.params.sized(ctx.task)
        task, data = ctx.task, ctx.data
        grid = [str(e) for e in (p.eps or (ctx.adapter.epsilons if p.norm == "linf" else l2_grid(ctx.adapter)))]
        values = [parse_eps(e, p.norm) for e in grid]
        checked = ctx.degeneracy()
        if checked.empty is not None:  # nothing to break: no attack is run
            return self._nothing(ctx, p.norm, grid, checked.empty)
        budget = Budget(p.steps, p.targets, p.square_queries)
        ens = Ensemble(ctx.adapter, task, ENSEMBLES[p.ensemble], budget, p.norm, ctx.generator())
        engine = LinfAttack(ctx.adapter, generator=ctx.generator())  # the clean gradient of the one-step attack
        clean_pred = predict_all(ctx.adapter, data, task, ctx.batch_size, ctx.device)
        reference = task.reference(data, clean_pred)
        subset = seeded_subset(len(data), p.min_eps_images, ctx.seed)
        n_batches = -(-len(data) // ctx.batch_size)
        bar = ctx.progress(len(grid) * n_batches + p.bisect * -(-len(subset) // ctx.batch_size), self.name)
        s = sweep(ctx, ens, engine, grid, values, clean_pred, reference, bar)
        checks = masking.from_sweep(s, ens)
        checks += masking.attack_again(ctx, ens, s, p.check_images)
        masked = None
        if any(c.flagged for c in checks):  # Square on every image at every ε, with a budget that converges
            s, masked = self._square_everywhere(ctx, ens, engine, s, p.masked_queries, bar)
        eps_min, censored = min_eps(ctx, ens, s, subset, p.bisect, bar)
        bar.close()
        per_class, matrix = self._per_class(ctx, s) if task.attack_per_class else (None, None)
        label = METRIC_LABELS[task.metric] if data.labelled else "agreement with the clean prediction"
        figures = Figures(ctx)
        rows = self._rows(task, s, ens)
        estimates = attack_estimates(task, s, p.norm, rows, not data.labelled, ctx.adapter)
        intervals = estimates.intervals()
        keys = [f"clean_{task.metric}"] + [f"robust_{task.metric}@{p.norm}={r.eps}" for r in rows]
        bars = [intervals.get(k) for k in keys]
        self._plots(ctx, figures, s, label, ens, eps_min, censored, per_class, matrix, bars)
        self._gallery(ctx, figures, ens, s)
        details = AttacksDetails(
            rows=rows,
            label_free=not data.labelled,
            metric=label,
            clean=s.clean,
            steps=p.steps,
            restarts=1,
            step_factor=2.0,
            engine=ENGINE,
            min_eps=self._min_eps_summary(eps_min, censored, values, p.bisect),
            checks=checks,
            suspect_masking=masked is not None,
            captions=figures.captions,
            per_class=per_class,
            norm=p.norm,
            members={m: ens.label(m) for m in ens.members},
            targets=p.targets if "apgd-t" in ens.members else None,
            square_queries=p.square_queries if "square" in ens.members else None,
            masked=masked,
            side_labels={m: self._side_label(m, data.labelled) for m in s.side},
            side_clean=s.side_clean,
        )
        score = float(np.mean([min(v / s.clean, 1.0) for v in s.robust])) if s.clean > 0 else 0.0
        metrics = self._metrics(task, s, details)
        result = ProbeResult(
            status="ok",
            score=score,
            metrics=metrics,
            findings=tuple(findings(details)),
            artifacts=tuple(figures.artifacts),
            details=details.to_dict(),
            suspect=masking.suspect_line(checks, masked),
            **estimates.to_dict(),
        )
        rates = [k for k in metrics if k not in CHECKS]  # label-free, every figure but the checks' is a rate
        return not_meaningful(result, checked.rates_not_meaningful, rates)

    @staticmethod
    def _nothing(ctx: Context, norm: str, grid: list[str], why: str) -> ProbeResult:
        """The result when the reference holds nothing to break: the clean figures (labelled), every other null."""
        task, data, kind = ctx.task, ctx.data, ctx.task.metric
        metrics: dict[str, float | None] = {}
        if data.labelled:
            clean_pred = predict_all(ctx.adapter, data, task, ctx.batch_size, ctx.device)
            clean = task.scores(clean_pred, task.reference(data, clean_pred), ctx.adapter)
            metrics.update({f"clean_{m}": v for m, v in clean.items()})
        for prefix in ("robust", "apgd", ONE_STEP[norm]):
            metrics.update({f"{prefix}_{kind}@{norm}={e}": None for e in grid})
        metrics["median_min_eps"] = None
        if task.attack_disappearance:
            metrics.update({f"disappearance_rate@{norm}={e}": None for e in grid})
        metrics.update(dict.fromkeys(CHECKS))
        return unmeasured(why, metrics, keep=tuple(k for k in metrics if k.startswith("clean_")))

    @staticmethod
    def _square_everywhere(ctx: Context, ens: Ensemble, engine: LinfAttack, s: Sweep, queries: int, bar):
        """The sweep again with Square alone, `queries` per image, on every image the ensemble left unbroken;
        each image keeps the worse of the two results."""
        again = sweep(ctx, ens, engine, s.grid, s.values, s.clean_pred, s.reference, bar, s, ("square",), queries)
        found = torch.cat([q[q >= 0] for q in again.square_query]) if again.square_query else torch.zeros(0)
        masked = MaskedRun(
            queries=queries,
            broken=[again.broken_first(gi)["square"] - s.broken_first(gi)["square"] for gi in range(len(s.grid))],
            last_success=int(found.max()) if len(found) else None,
        )
        return again, masked

    # ---- results -------------------------------------------------------------------------------------

    def _rows(self, task: Task, s: Sweep, ens: Ensemble) -> list[EpsRow]:
        """One row per ε of the grid; a detector's also says how many objects disappear."""
        rows = [
            EpsRow(
                e,
                v,
                f,
                r,
                first=a,
                broken_first={m: n for m, n in s.broken_first(gi).items() if m in ens.members or n},
                side={m: values[gi] for m, values in s.side.items()},
            )
            for gi, (e, v, f, r, a) in enumerate(zip(s.grid, s.values, s.fgsm, s.robust, s.first))
        ]
        if task.attack_disappearance:
            gone = self._disappearance(task, s.clean_pred, s.robust_pred, s.reference)
            return [ObjectsEpsRow(**dataclasses.asdict(r), disappearance=d) for r, d in zip(rows, gone)]
        return rows

    @staticmethod
    def _side_label(metric: str, labelled: bool) -> str:
        return METRIC_LABELS[metric] + ("" if labelled else " against the clean prediction")

    @staticmethod
    def _min_eps_summary(eps_min: np.ndarray, censored: np.ndarray, values: list[float], rounds: int) -> MinEps:
        median = float(np.median(eps_min)) if len(eps_min) else None
        return MinEps(
            n=len(eps_min),
            median=median,
            censored=int(censored.sum()),
            values=[round(float(v), 6) for v in eps_min],
            largest=max(values),
            bisect=rounds,
            median_censored=bool(median is not None and median >= max(values) and censored.sum() * 2 >= len(eps_min)),
        )

    @staticmethod
    def _metrics(task: Task, s: Sweep, d: AttacksDetails) -> dict[str, float | None]:
        """The metric keys (stable API): clean, robust (the worst case), APGD alone and the one-step attack per ε,
        then the checks' figures."""
        kind, norm = task.metric, d.norm
        metrics: dict[str, float | None] = {}
        if not d.label_free:
            metrics[f"clean_{kind}"] = s.clean
        for r in d.rows:
            metrics[f"robust_{kind}@{norm}={r.eps}"] = r.robust
        for side in d.side_labels:  # beside the task's metric (instance masks: mask_map50)
            if not d.label_free:
                metrics[f"clean_{side}"] = d.side_clean[side]
            for r in d.rows:
                metrics[f"robust_{side}@{norm}={r.eps}"] = r.side[side]
        for r in d.rows:
            metrics[f"apgd_{kind}@{norm}={r.eps}"] = r.first
        for r in d.rows:
            metrics[f"{ONE_STEP[norm]}_{kind}@{norm}={r.eps}"] = r.fgsm
        if d.min_eps.median is not None:
            metrics["median_min_eps"] = d.min_eps.median
        for r in d.rows:
            if isinstance(r, ObjectsEpsRow):
                metrics[f"disappearance_rate@{norm}={r.eps}"] = r.disappearance
        metrics["zero_gradient_share"] = s.zero_share
        metrics["nonfinite_gradient_share"] = s.bad_share
        metrics["suspect_masking"] = float(d.suspect_masking)
        return metrics

    @staticmethod
    def _disappearance(task: Task, clean_pred, robust_pred, reference) -> list[float | None]:
        """Per ε: the share of reference objects found when clean that the attacks make the detector miss."""
        found_clean = torch.cat(task.found(clean_pred, reference) or [torch.zeros(0, dtype=torch.bool)])
        out = []
        for pred in robust_pred:
            found_adv = torch.cat(task.found(pred, reference) or [torch.zeros(0, dtype=torch.bool)])
            n = int(found_clean.sum())
            out.append(float((found_clean & ~found_adv).sum()) / n if n else None)
        return out

    @staticmethod
    def _per_class(ctx: Context, s: Sweep) -> tuple[PerClass, torch.Tensor | None]:
        """Accuracy per true class at each ε, the ε at which each class falls below half its clean
        accuracy, and the confusion (true x predicted) under attack at the ε that halves the overall
        accuracy (the worst case throughout); with that confusion matrix for the figure (None past 20 classes)."""
        k, names, reference, grid = ctx.adapter.num_classes, ctx.adapter.class_names, s.reference, s.grid
        counts = torch.bincount(reference, minlength=k)
        clean_acc = torch.bincount(reference, weights=(s.clean_pred == reference).double(), minlength=k)
        robust = [
            torch.bincount(reference, weights=(pred == reference).double(), minlength=k) for pred in s.robust_pred
        ]
        rows = []
        for c in torch.nonzero(counts).flatten().tolist():
            n = int(counts[c])
            acc = [float(robust[gi][c]) / n for gi in range(len(grid))]
            base = float(clean_acc[c]) / n
            falls = next((grid[gi] for gi in s.order if acc[gi] < 0.5 * base), None) if base > 0 else "clean"
            rows.append(ClassRow(names[c], n, base, acc, falls))
        # weakest first: the class that falls at the smallest ε, then the lowest accuracy there
        rank = {g: i for i, g in enumerate([grid[gi] for gi in s.order])}
        rows.sort(
            key=lambda r: (
                -1 if r.falls_at == "clean" else rank.get(r.falls_at, len(rank)),
                [r.robust[gi] for gi in s.order],
            )
        )
        gi = next((gi for gi in s.order if s.robust[gi] < 0.5 * s.clean), s.order[-1])
        matrix = torch.zeros(k, k, dtype=torch.long)
        matrix.index_put_((reference, s.robust_pred[gi]), torch.ones_like(reference), accumulate=True)
        off = matrix.clone()
        off.fill_diagonal_(0)
        top = torch.argsort(off.flatten(), descending=True)[:8]
        confusions = [
            Confusion(
                true=names[int(t) // k],
                pred=names[int(t) % k],
                count=int(off.flatten()[t]),
                share=float(off.flatten()[t]) / max(1, int(counts[int(t) // k])),
            )
            for t in top
            if off.flatten()[t] > 0
        ]
        return PerClass(rows=rows, eps=grid[gi], confusions=confusions, grid=grid), matrix if k <= 20 else None

    # ---- figures -------------------------------------------------------------------------------------

    @staticmethod
    def _plots(ctx, figures: Figures, s: Sweep, label: str, ens: Ensemble, eps_min, censored, per_class, matrix, bars):
        """The metric against ε, the minimal-ε histogram, and (classifiers) the confusion under attack."""
        title = f"{label[0].upper()}{label[1:]} under attack versus ε"
        one_step = "FGSM" if ens.norm == "linf" else "FGM"
        curves = {"worst case (ensemble)": s.robust, f"{ens.label('apgd')} alone": s.first, one_step: s.fgsm}
        figures.save(
            "robust_accuracy.png",
            title,
            figs.robustness_curve,
            s.grid,
            s.values,
            curves,
            s.clean,
            label,
            ens.norm,
            bars,
        )
        if len(eps_min):
            title = "Smallest ε that breaks each image (the ensemble's worst case, bisection inside the grid)"
            figures.save("min_eps.png", title, figs.min_eps_histogram, eps_min, censored, s.values, s.grid)
        if per_class is not None and matrix is not None:
            title = "Where the classes go under attack: true class (rows) against the prediction under attack"
            figures.save("confusion.png", title, figs.confusion_heatmap, matrix, ctx.adapter.class_names, per_class.eps)

    def _gallery(self, ctx: Context, figures: Figures, ens: Ensemble, s: Sweep) -> None:
        """A few images at the budget that breaks them, attacked again (the same way) to show them."""
        if self.params.gallery <= 0 or not ctx.main:  # a figure: rank 0 draws it
            return
        task, order = ctx.task, np.argsort(s.values)
        if task.attack_gallery_at_flip:
            # each image at the smallest budget that flips it
            broken = torch.stack([s.robust_pred[i] != s.reference for i in order]) & (s.clean_pred == s.reference)
            first = torch.where(broken.any(0), broken.float().argmax(0), torch.tensor(-1))
            candidates = torch.nonzero(first >= 0).flatten()
            pick = candidates[seeded_subset(len(candidates), self.params.gallery, ctx.seed)]
            chosen = [(int(i), int(order[first[i]])) for i in pick]
        else:
            # the images that lose most at the smallest budget that halves the metric (else the largest)
            gi = next((i for i in order if s.robust[i] < 0.5 * s.clean), order[-1])
            drop = task.agreement(s.clean_pred, s.reference) - task.agreement(s.robust_pred[gi], s.reference)
            pick = torch.argsort(drop, descending=True)[: self.params.gallery]
            chosen = [(int(i), int(gi)) for i in pick[drop[pick] > 0].sort().values]
        if not chosen:
            return
        columns = [self._gallery_column(ctx, ens, s, i, gi) for i, gi in chosen]
        caption = (
            "Clean and adversarial images with the model's output, and the perturbation amplified to full contrast"
        )
        figures.save("examples.png", caption, figs.draw_attack_gallery, columns, ctx.adapter, ctx.data.labelled)

    @staticmethod
    def _gallery_column(ctx: Context, ens: Ensemble, s: Sweep, i: int, gi: int) -> figs.GalleryColumn:
        """Image i attacked at the grid's ε number gi, with the model's output on it clean and attacked."""
        task = ctx.task
        x = ctx.data.images_at(slice(i, i + 1), ctx.device)
        ref = task.take(s.reference, slice(i, i + 1))
        ens.generator.manual_seed(ctx.seed_for("attacks", "gallery", i))
        adv = ens.run(x, ref, s.values[gi]).adv
        with torch.no_grad():
            outs = ctx.adapter.predict(torch.cat([x, adv]))
        outs = (
            [o.cpu() for o in outs]
            if isinstance(outs, torch.Tensor)
            else [{k: v.cpu() for k, v in o.items()} for o in outs]
        )
        return figs.GalleryColumn(x[0].cpu(), adv[0].cpu(), outs[0], outs[1], s.grid[gi], s.values[gi], ref[0])
