"""`attacks`: L-inf FGSM and PGD over the model's ε grid, the minimal ε per image, and checks on the attack itself.

All tasks go through the project's batched loop (engine.py) on the adapter's own
per-image loss; ART supplies the gradient-free Square attack that checks PGD on classifiers.
Every image counts in the metric: one that is wrong when clean counts as broken.
Label-free data uses the clean prediction as the reference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from auditor.data import seeded_subset
from auditor.probes.attacks import figures as figs
from auditor.probes.attacks import gradient_masking as masking
from auditor.probes.attacks.engine import LinfAttack, bisect_min_eps
from auditor.probes.base import Context, Figures, Probe
from auditor.results import Finding, ProbeResult
from auditor.tasks import predict_all, task_of

METRIC_LABELS = {"accuracy": "accuracy", "miou": "mIoU", "map50": "mAP50"}
BROKEN_SHARE = 0.5  # an image is broken when it keeps less than half of its clean agreement with the reference


def parse_eps(text: str) -> float:
    """'0.1' or '2/255' -> float, checked to lie in (0, 1]."""
    text = str(text).strip()
    num, slash, den = text.partition("/")
    value = float(num) / float(den) if slash else float(num)
    if not 0 < value <= 1:
        raise ValueError(f"epsilon {text} must lie in (0, 1] (pixel space)")
    return value


class AttacksProbe(Probe):
    name = "attacks"
    template = "probes/attacks.html.j2"
    report_order = 10
    description = (
        "L-inf FGSM and PGD over an ε grid: accuracy, mIoU or mAP50 under attack, minimal ε per image, "
        "gradient-masking checks"
    )
    tasks = ("classify", "segment", "detect")
    # clean_/robust_/fgsm_ accuracy, miou and map50 and median_min_eps: higher is better
    lower_is_better = ("disappearance_rate", "zero_gradient_share", "nonfinite_gradient_share", "suspect_masking")

    @dataclass
    class Params:
        eps: tuple[str, ...] = ()  # L-inf budgets in pixel space ('0.1', '2/255'); empty: the model's grid
        steps: int = 20  # PGD iterations
        step_factor: float = 2.5  # PGD step = step_factor * eps / steps (Madry et al.)
        restarts: int = 1  # PGD random starts
        gallery: int = 6  # clean / adversarial / perturbation columns in the report
        # images whose minimal ε is found by bisection (a seeded subset); None: 64 for classifiers, 8 for the
        # detectors and segmenters, whose attack step costs 10-100 times more
        min_eps_images: int | None = None
        bisect: int | None = None  # bisection rounds inside the grid bracket (bracket / 2**bisect); None: 4 / 2
        check_images: int | None = None  # images for the stronger-PGD and ε = 1 checks; None: 32 / 8; 0 skips
        square_queries: int = 300  # Square attack iterations (classifiers)

        def sized(self, task: str) -> AttacksProbe.Params:
            """These parameters with the automatic subset sizes filled in for the task."""
            small = task != "classify"
            return dataclasses.replace(
                self,
                min_eps_images=(8 if small else 64) if self.min_eps_images is None else self.min_eps_images,
                check_images=(8 if small else 32) if self.check_images is None else self.check_images,
                bisect=(2 if small else 4) if self.bisect is None else self.bisect,
            )

    def run(self, ctx: Context) -> ProbeResult:
        p = self.params.sized(ctx.adapter.task)
        grid = [str(e) for e in (p.eps or ctx.adapter.epsilons)]
        values = [parse_eps(e) for e in grid]
        if p.steps < 1 or p.restarts < 1 or p.bisect < 0 or p.min_eps_images < 0 or p.check_images < 0:
            raise ValueError(
                "attacks.steps and attacks.restarts must be at least 1; bisect, min_eps_images and "
                "check_images at least 0"
            )
        ops = task_of(ctx.adapter.task)
        data = ctx.data
        engine = LinfAttack(ctx.adapter, p.steps, p.step_factor, p.restarts, ctx.generator())
        clean_pred = predict_all(ctx.adapter, data, ops, ctx.batch_size, ctx.device)
        reference = ops.reference(data, clean_pred)
        order = sorted(range(len(grid)), key=lambda i: values[i])

        n_batches = -(-len(data) // ctx.batch_size)
        subset = seeded_subset(len(data), p.min_eps_images, ctx.seed)
        bar = ctx.progress(len(grid) * n_batches + p.bisect * -(-len(subset) // ctx.batch_size), self.name)
        fgsm_parts, pgd_parts = [[] for _ in grid], [[] for _ in grid]
        zero_grad, bad_grad = [], []
        for b in range(n_batches):
            sl = slice(b * ctx.batch_size, (b + 1) * ctx.batch_size)
            x = data.images_at(sl, ctx.device)
            ref = ops.to(ops.take(reference, sl), ctx.device)
            grad, _, _ = engine.gradient(x, ref)  # one clean gradient serves FGSM at every ε
            finite = torch.isfinite(grad).flatten(1).all(1)
            bad_grad.append(~finite.cpu())
            zero_grad.append((finite & (grad.flatten(1).abs().amax(1) == 0)).cpu())
            for gi in order:
                x_fgsm = engine.fgsm_from_gradient(x, grad, values[gi])
                x_pgd = engine.pgd(x, ref, values[gi])
                with torch.no_grad():
                    fgsm_parts[gi].append(ops.predict(ctx.adapter, x_fgsm))
                    pgd_parts[gi].append(ops.predict(ctx.adapter, x_pgd))
                bar.update(1)
        fgsm_pred = [ops.concat(parts) for parts in fgsm_parts]
        pgd_pred = [ops.concat(parts) for parts in pgd_parts]

        clean = ops.score(clean_pred, reference, ctx.adapter) if data.labelled else 1.0
        pgd = [ops.score(pred, reference, ctx.adapter) for pred in pgd_pred]
        fgsm = [ops.score(pred, reference, ctx.adapter) for pred in fgsm_pred]
        k = ctx.adapter.num_classes
        agree_clean = ops.image_score(clean_pred, reference, k)
        agree_pgd = [ops.image_score(pred, reference, k) for pred in pgd_pred]

        min_eps, censored = self._min_eps(
            ctx, ops, engine, reference, subset, agree_clean, agree_pgd, values, order, p.bisect, bar
        )
        bar.close()
        kind = ops.metric
        metrics: dict[str, float | None] = {}
        if data.labelled:
            metrics[f"clean_{kind}"] = clean
        for e, v in zip(grid, pgd):
            metrics[f"robust_{kind}@linf={e}"] = v
        for e, v in zip(grid, fgsm):
            metrics[f"fgsm_{kind}@linf={e}"] = v
        median = float(np.median(min_eps)) if len(min_eps) else None
        if median is not None:
            metrics["median_min_eps"] = median
        extra: dict = {}
        if ctx.adapter.task == "detect":
            extra["disappearance"] = self._disappearance(ops, clean_pred, pgd_pred, reference)
            for e, v in zip(grid, extra["disappearance"]):
                metrics[f"disappearance_rate@linf={e}"] = v
        if ctx.adapter.task == "classify":
            extra["per_class"] = self._per_class(ctx, clean_pred, pgd_pred, reference, grid, order, clean, pgd)

        zero_share = float(torch.cat(zero_grad).double().mean())
        bad_share = float(torch.cat(bad_grad).double().mean())
        check_eps = self._check_eps(values, pgd, clean, order)
        checks = [
            masking.monotone(grid, values, pgd),
            masking.fgsm_weaker(grid, pgd, fgsm, p.steps),
            masking.gradients(zero_share, bad_share),
        ]
        checks += self._extra_checks(
            ctx, p, ops, engine, reference, pgd_pred[check_eps], grid[check_eps], values[check_eps], clean_pred
        )
        suspect = any(c.flagged for c in checks)
        metrics["zero_gradient_share"] = zero_share
        metrics["nonfinite_gradient_share"] = bad_share
        metrics["suspect_masking"] = float(suspect)
        score = float(np.mean([min(v / clean, 1.0) for v in pgd])) if clean > 0 else 0.0

        label = METRIC_LABELS[kind] if data.labelled else "agreement with the clean prediction"
        figures = Figures(ctx)
        figures.save(
            "robust_accuracy.png",
            f"{label[0].upper()}{label[1:]} under attack versus ε",
            figs.robustness_curve,
            grid,
            values,
            pgd,
            fgsm,
            clean,
            label,
            p.steps,
        )
        if len(min_eps):
            figures.save(
                "min_eps.png",
                "Smallest ε that breaks each image (PGD, bisection inside the grid)",
                figs.min_eps_histogram,
                min_eps,
                censored,
                values,
                grid,
            )
        if "per_class" in extra and extra["per_class"]["matrix"] is not None:
            pc = extra["per_class"]
            figures.save(
                "confusion.png",
                "Where the classes go under attack: true class (rows) against the prediction under PGD",
                figs.confusion_heatmap,
                pc["matrix"],
                ctx.adapter.class_names,
                pc["eps"],
            )
        self._gallery(ctx, figures, ops, engine, grid, values, pgd, clean, clean_pred, pgd_pred, reference)
        rows = [{"eps": e, "eps_value": v, "fgsm": f, "pgd": a} for e, v, a, f in zip(grid, values, pgd, fgsm)]
        if "disappearance" in extra:
            for r, d in zip(rows, extra["disappearance"]):
                r["disappearance"] = d
        details = {
            "rows": rows,
            "label_free": not data.labelled,
            "metric": label,
            "clean": clean,
            "steps": p.steps,
            "restarts": p.restarts,
            "step_factor": p.step_factor,
            "engine": "the project's batched torch PGD on the model's own loss (auditor/adversary.py)",
            "min_eps": {
                "n": len(min_eps),
                "median": median,
                "censored": int(censored.sum()),
                "values": [round(float(v), 6) for v in min_eps],
                "largest": max(values),
                "bisect": p.bisect,
                "median_censored": bool(
                    median is not None and median >= max(values) and censored.sum() * 2 >= len(min_eps)
                ),
            },
            "checks": [c.to_dict() for c in checks],
            "suspect_masking": suspect,
            "captions": figures.captions,
        }
        if "per_class" in extra:
            details["per_class"] = {k: v for k, v in extra["per_class"].items() if k != "matrix"}
        findings = self._findings(grid, values, pgd, fgsm, clean, label, data.labelled, details, checks, extra)
        return ProbeResult(
            status="ok",
            score=score,
            metrics=metrics,
            findings=tuple(findings),
            artifacts=tuple(figures.artifacts),
            details=details,
        )

    # ---- minimal ε ---------------------------------------------------------------------------------

    def _min_eps(self, ctx, ops, engine, reference, subset, agree_clean, agree_pgd, values, order, rounds, bar):
        """Per image of the subset: the smallest ε that breaks it (0 if wrong when clean), and whether
        it withstood the whole grid (then its value is the largest ε, a lower bound)."""
        if not subset:
            return np.zeros(0), np.zeros(0, dtype=bool)
        idx = torch.tensor(subset)
        a_clean = agree_clean[idx]
        broken = torch.stack([agree_pgd[gi][idx] < BROKEN_SHARE * a_clean for gi in order])  # G x S
        ever = broken.any(0)
        first = broken.float().argmax(0)
        sorted_values = torch.tensor([values[gi] for gi in order], dtype=torch.float64)
        hi = torch.where(ever, sorted_values[first], sorted_values[-1])
        lo = torch.where(first > 0, sorted_values[(first - 1).clamp_min(0)], torch.zeros_like(hi))
        wrong_clean = a_clean <= 0
        search = ever & ~wrong_clean
        rows = torch.nonzero(search).flatten()
        if len(rows) and rounds:

            def broken_at(eps: torch.Tensor) -> torch.Tensor:
                out = []
                for start in range(0, len(rows), ctx.batch_size):
                    chunk = rows[start : start + ctx.batch_size]
                    members = [subset[int(i)] for i in chunk]
                    x = ctx.data.images_at(members, ctx.device)
                    ref = ops.take(reference, members)
                    adv = engine.pgd(
                        x, ops.to(ref, ctx.device), eps[start : start + ctx.batch_size].to(ctx.device, x.dtype)
                    )
                    with torch.no_grad():
                        agree = ops.image_score(ops.predict(ctx.adapter, adv), ref, ctx.adapter.num_classes)
                    out.append(agree < BROKEN_SHARE * a_clean[chunk])
                    bar.update(1)
                return torch.cat(out)

            hi[rows] = bisect_min_eps(broken_at, lo[rows], hi[rows], rounds)
        result = torch.where(wrong_clean, torch.zeros_like(hi), hi)
        return result.numpy(), (~ever & ~wrong_clean).numpy()

    # ---- task extras -------------------------------------------------------------------------------

    @staticmethod
    def _disappearance(ops, clean_pred, pgd_pred, reference) -> list[float | None]:
        """Per ε: the share of reference objects found when clean that PGD makes the detector miss."""
        found_clean = torch.cat(ops.found(clean_pred, reference) or [torch.zeros(0, dtype=torch.bool)])
        out = []
        for pred in pgd_pred:
            found_adv = torch.cat(ops.found(pred, reference) or [torch.zeros(0, dtype=torch.bool)])
            n = int(found_clean.sum())
            out.append(float((found_clean & ~found_adv).sum()) / n if n else None)
        return out

    @staticmethod
    def _per_class(ctx, clean_pred, pgd_pred, reference, grid, order, clean, pgd) -> dict:
        """Accuracy per true class at each ε, the ε at which each class falls below half its clean
        accuracy, and the confusion (true x predicted) under PGD at the ε that halves the overall accuracy."""
        k = ctx.adapter.num_classes
        names = ctx.adapter.class_names
        counts = torch.bincount(reference, minlength=k)
        clean_acc = torch.bincount(reference, weights=(clean_pred == reference).double(), minlength=k)
        robust = [torch.bincount(reference, weights=(pred == reference).double(), minlength=k) for pred in pgd_pred]
        rows = []
        for c in torch.nonzero(counts).flatten().tolist():
            n = int(counts[c])
            acc = [float(robust[gi][c]) / n for gi in range(len(grid))]
            base = float(clean_acc[c]) / n
            falls = next((grid[gi] for gi in order if acc[gi] < 0.5 * base), None) if base > 0 else "clean"
            rows.append({"class": names[c], "n": n, "clean": base, "robust": acc, "falls_at": falls})
        # weakest first: the class that falls at the smallest ε, then the lowest accuracy there
        rank = {g: i for i, g in enumerate([grid[gi] for gi in order])}
        rows.sort(
            key=lambda r: (
                -1 if r["falls_at"] == "clean" else rank.get(r["falls_at"], len(rank)),
                [r["robust"][gi] for gi in order],
            )
        )
        gi = next((gi for gi in order if pgd[gi] < 0.5 * clean), order[-1])
        matrix = torch.zeros(k, k, dtype=torch.long)
        matrix.index_put_((reference, pgd_pred[gi]), torch.ones_like(reference), accumulate=True)
        off = matrix.clone()
        off.fill_diagonal_(0)
        top = torch.argsort(off.flatten(), descending=True)[:8]
        confusions = [
            {
                "true": names[int(t) // k],
                "pred": names[int(t) % k],
                "count": int(off.flatten()[t]),
                "share": float(off.flatten()[t]) / max(1, int(counts[int(t) // k])),
            }
            for t in top
            if off.flatten()[t] > 0
        ]
        return {
            "rows": rows,
            "eps": grid[gi],
            "confusions": confusions,
            "grid": grid,
            "matrix": matrix if k <= 20 else None,
        }

    # ---- checks on the attack itself ---------------------------------------------------------------

    @staticmethod
    def _check_eps(values, pgd, clean, order) -> int:
        """The grid ε whose PGD metric is nearest half of clean: where a weak attack shows most."""
        return min(order, key=lambda gi: (abs(pgd[gi] - 0.5 * clean), values[gi]))

    def _extra_checks(self, ctx, p, ops, engine, reference, pgd_pred, eps_text, eps, clean_pred) -> list[masking.Check]:
        names = ("more steps and restarts", "unbounded ε reaches zero", "gradient-free attack finds nothing PGD missed")
        if p.check_images == 0:
            return [masking.not_run(n, "skipped: attacks.check_images = 0") for n in names]
        members = seeded_subset(len(ctx.data), p.check_images, ctx.seed + 1)
        ref = ops.take(reference, members)
        base = ops.score(ops.take(pgd_pred, members), ref, ctx.adapter)
        clean = ops.score(ops.take(clean_pred, members), ref, ctx.adapter)
        # Twice the steps; classifiers (cheap, thanks to early stopping) also get two more restarts.
        # The stronger attack at the check ε and the one at ε = 1 share each batch (ε is per image):
        # a detector's or segmenter's step costs about the same for 8 images as for 16 on a CPU.
        steps = 2 * p.steps
        restarts = p.restarts + (2 if ctx.adapter.task == "classify" else 0)
        strong, unbounded = [], []
        half = max(1, ctx.batch_size // 2)
        for start in range(0, len(members), half):
            chunk = members[start : start + half]
            x = ctx.data.images_at(chunk, ctx.device)
            r = ops.take(reference, chunk)
            budgets = torch.tensor([eps] * len(chunk) + [1.0] * len(chunk), device=ctx.device)
            adv = engine.pgd(
                torch.cat([x, x]), ops.to(ops.concat([r, r]), ctx.device), budgets, steps=steps, restarts=restarts
            )
            with torch.no_grad():
                pred = ops.predict(ctx.adapter, adv)
            strong.append(ops.take(pred, slice(0, len(chunk))))
            unbounded.append(ops.take(pred, slice(len(chunk), None)))
        checks = [
            masking.stronger_pgd(
                eps_text, base, ops.score(ops.concat(strong), ref, ctx.adapter), steps, restarts, len(members)
            ),
            masking.unbounded(ops.score(ops.concat(unbounded), ref, ctx.adapter), clean, len(members)),
        ]
        if ctx.adapter.task != "classify":
            checks.append(
                masking.not_run(
                    names[2], f"ART's Square attack needs a classifier; not run for {ctx.adapter.task} models"
                )
            )
            return checks
        held = [i for i in members if bool(pgd_pred[i] == reference[i]) and bool(clean_pred[i] == reference[i])]
        broken = self._square(ctx, held, reference, eps, p.square_queries) if held else 0
        checks.append(masking.gradient_free(eps_text, len(held), broken, p.square_queries))
        return checks

    @staticmethod
    def _square(ctx, members, reference, eps, queries: int) -> int:
        """How many of these images ART's Square attack (Andriushchenko et al. 2020) misclassifies at ε."""
        from art.attacks.evasion import SquareAttack
        from art.estimators.classification import PyTorchClassifier

        adapter = ctx.adapter
        if ctx.device.type == "cuda" and ctx.device.index is not None:
            # ART places its model on the current CUDA device; plain "cuda" already is it
            # (set_device refuses a device without an index: seen on an H200 with torch 2.11)
            torch.cuda.set_device(ctx.device)
        estimator = PyTorchClassifier(
            model=adapter,
            loss=torch.nn.CrossEntropyLoss(),
            input_shape=(adapter.channels, *adapter.input_size),
            nb_classes=adapter.num_classes,
            clip_values=(0.0, 1.0),
            device_type="gpu" if ctx.device.type == "cuda" else "cpu",
        )
        np.random.seed(ctx.seed)  # Square draws its squares from numpy
        attack = SquareAttack(
            estimator, norm=np.inf, eps=eps, max_iter=queries, nb_restarts=1, batch_size=ctx.batch_size, verbose=False
        )
        x = ctx.data.images_at(members).numpy()
        y = reference[torch.tensor(members)].numpy()
        adv = torch.from_numpy(attack.generate(x=x, y=y)).to(ctx.device)
        with torch.no_grad():
            pred = adapter.predict(adv).cpu()
        return int((pred != torch.from_numpy(y)).sum())

    # ---- report --------------------------------------------------------------------------------------

    def _findings(self, grid, values, pgd, fgsm, clean, label, labelled, details, checks, extra) -> list[Finding]:
        findings = []
        if not labelled:
            findings.append(
                Finding(
                    "info",
                    "label-free data: the clean prediction is the reference, so the metric is "
                    "the share of the prediction an attack cannot change",
                )
            )
        order = np.argsort(values)
        half = [i for i in order if pgd[i] < 0.5 * clean]
        if clean <= 0:
            findings.append(
                Finding(
                    "high",
                    f"the model scores 0 {label} on the clean images: check the data, the "
                    "class order and the weights; robustness figures mean nothing here",
                    key=True,
                )
            )
        elif half:
            i = half[0]
            sev = "high" if i == order[0] else "medium"
            in_levels = "" if "/" in str(grid[i]) else f" ({values[i] * 255:.3g}/255)"
            findings.append(
                Finding(
                    sev,
                    f"PGD at ε={grid[i]}{in_levels} cuts {label} from {clean:.1%} "
                    f"to {pgd[i]:.1%} (below half of clean)",
                    key=True,
                )
            )
        else:
            i = order[-1]
            findings.append(
                Finding(
                    "low",
                    f"at the largest budget tested, ε={grid[i]}, PGD keeps {label} at "
                    f"{pgd[i]:.1%} of {clean:.1%} clean",
                    key=True,
                )
            )
        m = details["min_eps"]
        if m["n"]:
            if m["median_censored"]:
                findings.append(
                    Finding(
                        "low",
                        f"more than half of {m['n']} images withstand PGD at the largest ε "
                        f"({m['largest']:.4g}): the median minimal ε is at least that",
                        key=True,
                    )
                )
            else:
                findings.append(
                    Finding(
                        "info",
                        f"half of {m['n']} images break at ε ≤ {m['median']:.4g} "
                        f"(median minimal ε, {m['median'] * 255:.1f}/255)",
                        key=True,
                    )
                )
        per_class = extra.get("per_class")
        if per_class and per_class["confusions"]:
            c = per_class["confusions"][0]
            findings.append(
                Finding(
                    "info",
                    f"under PGD at ε={per_class['eps']}, {c['share']:.0%} of class "
                    f"'{c['true']}' becomes '{c['pred']}', the most common confusion",
                )
            )
        if extra.get("disappearance"):
            d = [(g, v) for g, v in zip(grid, extra["disappearance"]) if v is not None]
            if d:
                g, v = max(d, key=lambda t: t[1])
                findings.append(
                    Finding(
                        "medium" if v >= 0.5 else "info",
                        f"PGD at ε={g} makes {v:.0%} of the objects found on clean images disappear",
                        key=True,
                    )
                )
        for c in checks:
            if c.flagged:
                findings.append(Finding("medium", f"suspect result ({c.name}): {c.text}", key=True))
        return findings

    def _gallery(self, ctx, figures, ops, engine, grid, values, pgd, clean, clean_pred, pgd_pred, reference) -> None:
        """A few images at the budget that breaks them, attacked again (the same way) to show them."""
        if self.params.gallery <= 0:
            return
        order = np.argsort(values)
        if ctx.adapter.task == "classify":
            # each image at the smallest budget that flips it
            broken = torch.stack([pgd_pred[i] != reference for i in order]) & (clean_pred == reference)
            first = torch.where(broken.any(0), broken.float().argmax(0), torch.tensor(-1))
            candidates = torch.nonzero(first >= 0).flatten()
            pick = candidates[seeded_subset(len(candidates), self.params.gallery, ctx.seed)]
            chosen = [(int(i), int(order[first[i]])) for i in pick]
        else:
            # the images that lose most at the smallest budget that halves the metric (else the largest)
            gi = next((i for i in order if pgd[i] < 0.5 * clean), order[-1])
            drop = ops.agreement(clean_pred, reference) - ops.agreement(pgd_pred[gi], reference)
            pick = torch.argsort(drop, descending=True)[: self.params.gallery]
            chosen = [(int(i), int(gi)) for i in pick[drop[pick] > 0].sort().values]
        if not chosen:
            return
        columns = []
        for i, gi in chosen:
            x = ctx.data.images_at(slice(i, i + 1), ctx.device)
            ref = ops.take(reference, slice(i, i + 1))
            adv = engine.pgd(x, ops.to(ref, ctx.device), values[gi])
            with torch.no_grad():
                outs = ctx.adapter.predict(torch.cat([x, adv]))
            outs = (
                [o.cpu() for o in outs]
                if isinstance(outs, torch.Tensor)
                else [{k: v.cpu() for k, v in o.items()} for o in outs]
            )
            columns.append((x[0].cpu(), adv[0].cpu(), outs[0], outs[1], grid[gi], values[gi], ref[0]))
        figures.save(
            "examples.png",
            "Clean and adversarial images with the model's output, and the perturbation amplified to full contrast",
            figs.draw_attack_gallery,
            columns,
            ctx.adapter,
            ctx.data.labelled,
        )
