"""`attacks`: L-inf FGSM and PGD over the model's epsilon grid (classifiers).

FGSM: Goodfellow et al. 2015. PGD: Madry et al. 2018, with a random start and the
step size 2.5 * eps / steps of that paper. Both run through ART's PyTorch estimator
(`PyTorchClassifier`, `FastGradientMethod`, `ProjectedGradientDescent`) on the run's
device, batch by batch. Robust accuracy counts every image: one misclassified clean
counts as broken. Label-free data uses the clean prediction as the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from auditor.probes.base import Context, Probe
from auditor.results import Finding, ProbeResult

FGSM_MARGIN = 0.01  # FGSM beating PGD by more than this is a sign of a weak or masked PGD


def parse_eps(text: str) -> float:
    """'0.1' or '2/255' -> float, checked to lie in (0, 1]."""
    text = str(text).strip()
    num, slash, den = text.partition("/")
    value = float(num) / float(den) if slash else float(num)
    if not 0 < value <= 1:
        raise ValueError(f"epsilon {text} must lie in (0, 1] (pixel space)")
    return value


def accuracy_key(kind: str, eps: str) -> str:
    return f"{kind}@linf={eps}"


class AttacksProbe(Probe):
    name = "attacks"
    description = "L-inf FGSM and PGD over an epsilon grid via ART: robust accuracy curve and adversarial examples"
    tasks = ("classify",)

    @dataclass
    class Params:
        eps: tuple[str, ...] = ()  # L-inf budgets in pixel space ('0.1', '2/255'); empty: the model's grid
        steps: int = 20  # PGD iterations
        step_factor: float = 2.5  # PGD step = step_factor * eps / steps (Madry et al.)
        restarts: int = 1  # PGD random starts
        gallery: int = 6  # clean / adversarial / perturbation triples in the report

    def run(self, ctx: Context) -> ProbeResult:
        from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

        p = self.params
        grid = [str(e) for e in (p.eps or ctx.adapter.epsilons)]
        values = [parse_eps(e) for e in grid]
        if p.steps < 1 or p.restarts < 1:
            raise ValueError("attacks.steps and attacks.restarts must be at least 1")
        np.random.seed(ctx.seed)  # ART draws PGD's random start from numpy
        estimator = _art_classifier(ctx)
        data = ctx.data
        n = len(data)
        clean_pred = _predict_all(ctx)
        reference = data.labels.clone() if data.labelled else clean_pred.clone()
        clean_correct = clean_pred == reference
        pgd_correct = torch.zeros(len(grid), n, dtype=torch.bool)
        fgsm_correct = torch.zeros(len(grid), n, dtype=torch.bool)
        adv_pred = torch.full((len(grid), n), -1, dtype=torch.long)
        first_broken = torch.full((n,), -1, dtype=torch.long)  # grid index where PGD first succeeds
        first_adv = torch.zeros_like(data.images, dtype=torch.float32)

        n_batches = -(-n // ctx.batch_size)
        bar = ctx.progress(len(grid) * n_batches, "attacks")
        for gi, eps in sorted(enumerate(values), key=lambda t: t[1]):
            fgsm = FastGradientMethod(estimator, norm=np.inf, eps=eps, batch_size=ctx.batch_size)
            pgd = ProjectedGradientDescent(estimator, norm=np.inf, eps=eps, eps_step=p.step_factor * eps / p.steps,
                                           max_iter=p.steps, num_random_init=p.restarts,
                                           batch_size=ctx.batch_size, verbose=False)
            for b in range(n_batches):
                sl = slice(b * ctx.batch_size, (b + 1) * ctx.batch_size)
                x, _ = data.batch(sl)
                y = reference[sl].numpy()
                x_np = x.numpy()
                x_fgsm = torch.from_numpy(fgsm.generate(x=x_np, y=y))
                x_pgd = torch.from_numpy(pgd.generate(x=x_np, y=y))
                fgsm_correct[gi, sl] = _predict(ctx, x_fgsm) == reference[sl]
                pred = _predict(ctx, x_pgd)
                adv_pred[gi, sl] = pred
                pgd_correct[gi, sl] = pred == reference[sl]
                newly = (~pgd_correct[gi, sl]) & clean_correct[sl] & (first_broken[sl] < 0)
                idx = torch.arange(sl.start, sl.start + len(pred))[newly]
                first_broken[idx] = gi
                first_adv[idx] = x_pgd[newly]
                bar.update(1)
        bar.close()

        clean_acc = clean_correct.double().mean().item() if data.labelled else 1.0
        pgd_acc = pgd_correct.double().mean(dim=1).tolist()
        fgsm_acc = fgsm_correct.double().mean(dim=1).tolist()
        metrics: dict[str, float | None] = {}
        if data.labelled:
            metrics["clean_accuracy"] = clean_acc
        for e, a in zip(grid, pgd_acc):
            metrics[accuracy_key("robust_accuracy", e)] = a
        for e, a in zip(grid, fgsm_acc):
            metrics[accuracy_key("fgsm_accuracy", e)] = a
        score = float(np.mean([min(a / clean_acc, 1.0) for a in pgd_acc])) if clean_acc > 0 else 0.0

        artifacts = [self._plot(ctx, grid, values, pgd_acc, fgsm_acc, clean_acc, data.labelled)]
        gallery = self._gallery(ctx, first_broken, first_adv, clean_pred, adv_pred, reference, grid, values)
        if gallery:
            artifacts.append(gallery)
        findings = self._findings(grid, values, pgd_acc, fgsm_acc, clean_acc, data.labelled, p)
        rows = [{"eps": e, "eps_value": v, "fgsm": f, "pgd": a} for e, v, a, f in zip(grid, values, pgd_acc, fgsm_acc)]
        details = {"rows": rows, "label_free": not data.labelled, "steps": p.steps, "restarts": p.restarts,
                   "step_factor": p.step_factor, "engine": "ART " + _art_version(),
                   "captions": {f"{self.name}/robust_accuracy.png": "Accuracy under attack versus ε",
                                f"{self.name}/examples.png": "Clean, adversarial (smallest ε on the grid that flips "
                                                             "the prediction) and the perturbation, amplified"}}
        return ProbeResult(status="ok", score=score, metrics=metrics, findings=tuple(findings),
                           artifacts=tuple(artifacts), details=details)

    def _findings(self, grid, values, pgd_acc, fgsm_acc, clean_acc, labelled, p) -> list[Finding]:
        findings = []
        what = "accuracy" if labelled else "agreement with the clean prediction"
        if not labelled:
            findings.append(Finding("info", "label-free data: the clean prediction is the reference, so "
                                            "robust accuracy is the share of predictions an attack cannot change"))
        order = np.argsort(values)
        half = [grid[i] for i in order if pgd_acc[i] < 0.5 * clean_acc]
        if half:
            first = half[0]
            i = grid.index(first)
            sev = "high" if i == order[0] else "medium"
            findings.append(Finding(sev, f"PGD at ε={first} cuts {what} from {clean_acc:.1%} to {pgd_acc[i]:.1%} "
                                         f"(below half of clean)"))
        else:
            i = order[-1]
            findings.append(Finding("low", f"at the largest budget tested, ε={grid[i]}, PGD keeps {what} at "
                                           f"{pgd_acc[i]:.1%} of {clean_acc:.1%} clean"))
        stronger = [grid[i] for i in range(len(grid)) if fgsm_acc[i] < pgd_acc[i] - FGSM_MARGIN]
        if stronger:
            findings.append(Finding("medium", f"FGSM beats PGD at ε={', '.join(stronger)}: PGD looks under-converged "
                                              f"or the gradients are masked; try --set attacks.steps={p.steps * 3}"))
        return findings

    def _plot(self, ctx, grid, values, pgd_acc, fgsm_acc, clean_acc, labelled) -> str:
        from auditor.figures import pyplot, save_figure

        plt = pyplot()
        order = np.argsort(values)
        xs = [0.0] + [values[i] for i in order]
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        ax.plot(xs, [clean_acc] + [pgd_acc[i] for i in order], "o-", color="#c0392b", label=f"PGD ({self.params.steps} steps)")
        ax.plot(xs, [clean_acc] + [fgsm_acc[i] for i in order], "s--", color="#7f8c8d", label="FGSM")
        ax.set_xticks(xs, ["0"] + [grid[i] for i in order], rotation=30)
        ax.set_xlabel("ε (L∞, pixel space)")
        ax.set_ylabel("accuracy" if labelled else "agreement with clean")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
        path, rel = ctx.artifact("robust_accuracy.png")
        save_figure(fig, path)
        return rel

    def _gallery(self, ctx, first_broken, first_adv, clean_pred, adv_pred, reference, grid, values) -> str | None:
        broken = torch.nonzero(first_broken >= 0).flatten()
        if len(broken) == 0 or self.params.gallery <= 0:
            return None
        g = torch.Generator().manual_seed(ctx.seed)
        pick = broken[torch.randperm(len(broken), generator=g)[: self.params.gallery]].sort().values
        from auditor.figures import pyplot, save_figure, to_display

        plt = pyplot()
        names = ctx.adapter.class_names
        # One column per image: clean, adversarial, perturbation; columns compare at a glance.
        fig, axes = plt.subplots(3, len(pick), figsize=(1.45 * len(pick) + 0.3, 4.6), squeeze=False)
        for col, i in enumerate(pick.tolist()):
            gi = int(first_broken[i])
            eps = values[gi]
            clean, _ = ctx.data.batch(slice(i, i + 1))
            adv = first_adv[i:i + 1]
            delta = (adv - clean) / (2 * eps) + 0.5  # the full budget maps to black / white
            truth = f"\n(ref {_short(names[reference[i]], 12)})" if ctx.data.labelled else ""
            titles = [f"{_short(names[clean_pred[i]], 14)}{truth}", f"ε={grid[gi]}:\n{_short(names[adv_pred[gi, i]], 14)}",
                      f"δ ×{0.5 / eps:.0f}"]
            for row, (img, title) in enumerate(zip((clean[0], adv[0], delta[0]), titles)):
                arr, cmap = to_display(img)
                ax = axes[row, col]
                ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
                ax.set_title(title, fontsize=7)
                ax.set_xticks([])
                ax.set_yticks([])
        for row, label in enumerate(("clean", "adversarial", "perturbation")):
            axes[row, 0].set_ylabel(label, fontsize=8)
        fig.tight_layout()
        path, rel = ctx.artifact("examples.png")
        save_figure(fig, path)
        return rel


def _short(text: str, n: int = 34) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _art_classifier(ctx: Context):
    from art.estimators.classification import PyTorchClassifier

    adapter = ctx.adapter
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)  # ART places its model on the current CUDA device
    return PyTorchClassifier(model=adapter, loss=torch.nn.CrossEntropyLoss(),
                             input_shape=(adapter.channels, *adapter.input_size), nb_classes=adapter.num_classes,
                             clip_values=(0.0, 1.0), device_type="gpu" if ctx.device.type == "cuda" else "cpu")


@torch.no_grad()
def _predict(ctx: Context, x: torch.Tensor) -> torch.Tensor:
    out = []
    for start in range(0, len(x), ctx.batch_size):
        out.append(ctx.adapter.predict(x[start:start + ctx.batch_size].to(ctx.device)).cpu())
    return torch.cat(out)


def _predict_all(ctx: Context) -> torch.Tensor:
    return torch.cat([_predict(ctx, x) for x, _ in ctx.data.batches(ctx.batch_size)])


def _art_version() -> str:
    import art

    return art.__version__
