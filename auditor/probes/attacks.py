"""`attacks`: L-inf FGSM and PGD over the model's epsilon grid, for classifiers, segmenters and detectors.

FGSM: Goodfellow et al. 2015. PGD: Madry et al. 2018, with a random start and the step
size 2.5 * eps / steps of that paper; with several restarts, each image keeps the restart
of highest loss. Classifiers are attacked through ART's PyTorch estimator
(`PyTorchClassifier`, `FastGradientMethod`, `ProjectedGradientDescent`); ART has no
estimator for segmenters, and its YOLO estimator wants ultralytics' own pre/post-processing,
so segmenters and detectors are attacked by a batched torch loop on the adapter's own
loss (pixel cross-entropy; the detector's training loss on its raw head outputs). Every image counts in the metric: one that is
wrong when clean counts as broken. Label-free data uses the clean prediction as the
reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from auditor.probes.base import Context, Probe
from auditor.results import Finding, ProbeResult
from auditor.tasks import ops_for, predict_all

METRIC_LABELS = {"accuracy": "accuracy", "miou": "mIoU", "map50": "mAP50"}
FGSM_MARGIN = 0.01  # FGSM beating PGD by more than this is a sign of a weak or masked PGD


def parse_eps(text: str) -> float:
    """'0.1' or '2/255' -> float, checked to lie in (0, 1]."""
    text = str(text).strip()
    num, slash, den = text.partition("/")
    value = float(num) / float(den) if slash else float(num)
    if not 0 < value <= 1:
        raise ValueError(f"epsilon {text} must lie in (0, 1] (pixel space)")
    return value


class ArtClassifierAttack:
    """FGSM and PGD from ART on a PyTorchClassifier wrapping the adapter (numpy in, numpy out)."""

    def __init__(self, ctx: Context, steps: int, step_factor: float, restarts: int):
        from art.estimators.classification import PyTorchClassifier

        adapter = ctx.adapter
        if ctx.device.type == "cuda":
            torch.cuda.set_device(ctx.device)  # ART places its model on the current CUDA device
        self.estimator = PyTorchClassifier(
            model=adapter, loss=torch.nn.CrossEntropyLoss(), input_shape=(adapter.channels, *adapter.input_size),
            nb_classes=adapter.num_classes, clip_values=(0.0, 1.0),
            device_type="gpu" if ctx.device.type == "cuda" else "cpu")
        self.steps, self.step_factor, self.restarts, self.batch = steps, step_factor, restarts, ctx.batch_size
        self._attacks: dict[float, tuple] = {}  # eps -> (FGSM, PGD), built once per budget
        np.random.seed(ctx.seed)  # ART draws PGD's random start from numpy

    def _for(self, eps: float) -> tuple:
        from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

        if eps not in self._attacks:
            self._attacks[eps] = (
                FastGradientMethod(self.estimator, norm=np.inf, eps=eps, batch_size=self.batch),
                ProjectedGradientDescent(self.estimator, norm=np.inf, eps=eps, eps_step=self.step_factor * eps / self.steps,
                                         max_iter=self.steps, num_random_init=self.restarts, batch_size=self.batch,
                                         verbose=False))
        return self._attacks[eps]

    def __call__(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        fgsm, pgd = self._for(eps)
        x_np, y_np = x.detach().cpu().numpy(), y.cpu().numpy()
        return (torch.from_numpy(fgsm.generate(x=x_np, y=y_np)).to(x.device),
                torch.from_numpy(pgd.generate(x=x_np, y=y_np)).to(x.device))


class TorchAttack:
    """FGSM and PGD as a batched torch loop on the adapter's per-image loss, on the device."""

    def __init__(self, ctx: Context, steps: int, step_factor: float, restarts: int):
        self.adapter, self.steps, self.step_factor, self.restarts = ctx.adapter, steps, step_factor, restarts
        self.generator = ctx.generator()

    def _grad(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().requires_grad_(True)
        loss = self.adapter.objective(x, y)
        grad, = torch.autograd.grad(loss.sum(), x)
        return grad, loss.detach()

    def __call__(self, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        grad, _ = self._grad(x, y)
        x_fgsm = (x + eps * grad.sign()).clamp(0, 1)
        step = self.step_factor * eps / self.steps
        best, best_loss = x.clone(), torch.full((len(x),), -float("inf"), device=x.device)
        for _ in range(self.restarts):
            adv = (x + torch.empty_like(x).uniform_(-eps, eps, generator=self.generator)).clamp(0, 1)
            for _ in range(self.steps):
                grad, _ = self._grad(adv, y)
                adv = torch.min(torch.max(adv + step * grad.sign(), x - eps), x + eps).clamp(0, 1)
            with torch.no_grad():
                loss = self.adapter.objective(adv, y)
            better = loss > best_loss
            best[better], best_loss[better] = adv[better], loss[better]
        return x_fgsm, best


class AttacksProbe(Probe):
    name = "attacks"
    description = "L-inf FGSM and PGD over an epsilon grid: accuracy, mIoU or mAP50 under attack, adversarial examples"
    tasks = ("classify", "segment", "detect")

    @dataclass
    class Params:
        eps: tuple[str, ...] = ()  # L-inf budgets in pixel space ('0.1', '2/255'); empty: the model's grid
        steps: int = 20  # PGD iterations
        step_factor: float = 2.5  # PGD step = step_factor * eps / steps (Madry et al.)
        restarts: int = 1  # PGD random starts
        gallery: int = 6  # clean / adversarial / perturbation columns in the report

    def run(self, ctx: Context) -> ProbeResult:
        p = self.params
        grid = [str(e) for e in (p.eps or ctx.adapter.epsilons)]
        values = [parse_eps(e) for e in grid]
        if p.steps < 1 or p.restarts < 1:
            raise ValueError("attacks.steps and attacks.restarts must be at least 1")
        task = ctx.adapter.task
        ops = ops_for(task)
        engine = (ArtClassifierAttack if task == "classify" else TorchAttack)(ctx, p.steps, p.step_factor, p.restarts)
        data = ctx.data
        clean_pred = predict_all(ctx.adapter, ctx.data, ops, ctx.batch_size, ctx.device)
        reference = ops.reference(data, clean_pred)
        fgsm_parts: list[list] = [[] for _ in grid]
        pgd_parts: list[list] = [[] for _ in grid]

        n_batches = -(-len(data) // ctx.batch_size)
        bar = ctx.progress(len(grid) * n_batches, self.name)
        for gi, eps in sorted(enumerate(values), key=lambda t: t[1]):
            for b in range(n_batches):
                sl = slice(b * ctx.batch_size, (b + 1) * ctx.batch_size)
                x, _ = data.batch(sl, ctx.device)
                x_fgsm, x_pgd = engine(x, ops.to(ops.take(reference, sl), ctx.device), eps)
                with torch.no_grad():
                    fgsm_parts[gi].append(ops.predict(ctx.adapter, x_fgsm))
                    pgd_parts[gi].append(ops.predict(ctx.adapter, x_pgd))
                bar.update(1)
        bar.close()
        fgsm_pred = [ops.concat(parts) for parts in fgsm_parts]
        pgd_pred = [ops.concat(parts) for parts in pgd_parts]

        clean = ops.score(clean_pred, reference, ctx.adapter) if data.labelled else 1.0
        pgd = [ops.score(pred, reference, ctx.adapter) for pred in pgd_pred]
        fgsm = [ops.score(pred, reference, ctx.adapter) for pred in fgsm_pred]
        kind = ops.metric
        metrics: dict[str, float | None] = {}
        if data.labelled:
            metrics[f"clean_{kind}"] = clean
        for e, v in zip(grid, pgd):
            metrics[f"robust_{kind}@linf={e}"] = v
        for e, v in zip(grid, fgsm):
            metrics[f"fgsm_{kind}@linf={e}"] = v
        score = float(np.mean([min(v / clean, 1.0) for v in pgd])) if clean > 0 else 0.0

        label = METRIC_LABELS[kind] if data.labelled else "agreement with the clean prediction"
        artifacts = [self._plot(ctx, grid, values, pgd, fgsm, clean, label)]
        gallery = self._gallery(ctx, ops, engine, grid, values, pgd, clean, clean_pred, pgd_pred, reference)
        if gallery:
            artifacts.append(gallery)
        rows = [{"eps": e, "eps_value": v, "fgsm": f, "pgd": a} for e, v, a, f in zip(grid, values, pgd, fgsm)]
        details = {"rows": rows, "label_free": not data.labelled, "metric": label, "clean": clean, "steps": p.steps,
                   "restarts": p.restarts, "step_factor": p.step_factor,
                   "engine": "ART " + _art_version() if task == "classify" else "torch loop on the model's own loss",
                   "captions": {f"{self.name}/robust_accuracy.png": f"{label[0].upper()}{label[1:]} under attack versus ε",
                                f"{self.name}/examples.png": "Clean and adversarial images with the model's output, and "
                                                             "the perturbation amplified to full contrast"}}
        return ProbeResult(status="ok", score=score, metrics=metrics,
                           findings=tuple(self._findings(grid, values, pgd, fgsm, clean, label, data.labelled)),
                           artifacts=tuple(artifacts), details=details)

    def _findings(self, grid, values, pgd, fgsm, clean, label, labelled) -> list[Finding]:
        findings = []
        if not labelled:
            findings.append(Finding("info", "label-free data: the clean prediction is the reference, so the metric is "
                                            "the share of the prediction an attack cannot change"))
        order = np.argsort(values)
        half = [i for i in order if pgd[i] < 0.5 * clean]
        if clean <= 0:
            findings.append(Finding("high", f"the model scores 0 {label} on the clean images: check the data, the "
                                            "class order and the weights; robustness figures mean nothing here"))
        elif half:
            i = half[0]
            sev = "high" if i == order[0] else "medium"
            findings.append(Finding(sev, f"PGD at ε={grid[i]} cuts {label} from {clean:.1%} to {pgd[i]:.1%} "
                                         "(below half of clean)"))
        else:
            i = order[-1]
            findings.append(Finding("low", f"at the largest budget tested, ε={grid[i]}, PGD keeps {label} at "
                                           f"{pgd[i]:.1%} of {clean:.1%} clean"))
        stronger = [grid[i] for i in range(len(grid)) if fgsm[i] < pgd[i] - FGSM_MARGIN]
        if stronger:
            findings.append(Finding("medium", f"FGSM beats PGD at ε={', '.join(stronger)}: PGD looks under-converged or "
                                              f"the gradients are masked; try --set attacks.steps={self.params.steps * 3}"))
        return findings

    def _plot(self, ctx, grid, values, pgd, fgsm, clean, label) -> str:
        from auditor.figures import pyplot, save_figure

        plt = pyplot()
        order = np.argsort(values)
        xs = [0.0] + [values[i] for i in order]
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        ax.plot(xs, [clean] + [pgd[i] for i in order], "o-", color="#c0392b", label=f"PGD ({self.params.steps} steps)")
        ax.plot(xs, [clean] + [fgsm[i] for i in order], "s--", color="#7f8c8d", label="FGSM")
        ax.set_xticks(xs, ["0"] + [grid[i] for i in order], rotation=30)
        ax.set_xlabel("ε (L∞, pixel space)")
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
        path, rel = ctx.artifact("robust_accuracy.png")
        save_figure(fig, path)
        return rel

    def _gallery(self, ctx, ops, engine, grid, values, pgd, clean, clean_pred, pgd_pred, reference) -> str | None:
        """A few images at the budget that breaks them, attacked again (the same way) to show them."""
        if self.params.gallery <= 0:
            return None
        order = np.argsort(values)
        if ctx.adapter.task == "classify":
            # each image at the smallest budget that flips it
            broken = torch.stack([pgd_pred[i] != reference for i in order]) & (clean_pred == reference)
            first = torch.where(broken.any(0), broken.float().argmax(0), torch.tensor(-1))
            candidates = torch.nonzero(first >= 0).flatten()
            g = torch.Generator().manual_seed(ctx.seed)
            pick = candidates[torch.randperm(len(candidates), generator=g)[: self.params.gallery]].sort().values
            chosen = [(int(i), int(order[first[i]])) for i in pick]
        else:
            # the images that lose most at the smallest budget that halves the metric (else the largest)
            gi = next((i for i in order if pgd[i] < 0.5 * clean), order[-1])
            drop = ops.agreement(clean_pred, reference) - ops.agreement(pgd_pred[gi], reference)
            pick = torch.argsort(drop, descending=True)[: self.params.gallery]
            chosen = [(int(i), int(gi)) for i in pick[drop[pick] > 0].sort().values]
        if not chosen:
            return None
        columns = []
        for i, gi in chosen:
            x, _ = ctx.data.batch(slice(i, i + 1), ctx.device)
            ref = ops.take(reference, slice(i, i + 1))
            _, adv = engine(x, ops.to(ref, ctx.device), values[gi])
            with torch.no_grad():
                outs = ctx.adapter.predict(torch.cat([x, adv]))
            outs = [o.cpu() for o in outs] if isinstance(outs, torch.Tensor) else [{k: v.cpu() for k, v in o.items()} for o in outs]
            columns.append((x[0].cpu(), adv[0].cpu(), outs[0], outs[1], grid[gi], values[gi], ref[0]))
        from auditor.figures import draw_attack_gallery

        path, rel = ctx.artifact("examples.png")
        draw_attack_gallery(columns, ctx.adapter, ctx.data.labelled, path)
        return rel


def _art_version() -> str:
    import art

    return art.__version__
