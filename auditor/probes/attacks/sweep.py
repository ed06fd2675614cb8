"""The ensemble over the ε grid, batch by batch, and the minimal ε per image.

Two facts about balls save most of the work and are exact for the worst case: an adversarial found
at a small ε is one at every larger ε (so a detector's or segmenter's image keeps, at each ε, its worst
prediction over the budgets up to it), and a classifier's image that withstands every attack in a
large ball is counted robust in the smaller balls inside it. Classifiers therefore sweep the grid from
the largest ε down: an image spends the ensemble's full budget once, at the largest ε it withstands,
and breaks cheaply (in a few APGD steps) above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from auditor import distributed
from auditor.probes.attacks.engine import LinfAttack, bisect_min_eps
from auditor.probes.attacks.ensemble import BROKEN_SHARE, CLEAN, MEMBERS, NONE, Ensemble
from auditor.probes.attacks.pooled import lowest_per_eps
from auditor.probes.base import Context


@dataclass
class Sweep:
    """The data attacked at every ε of the grid: predictions and the task's metric per ε (grid order)."""

    grid: list[str]  # the budgets as given ('0.1', '2/255')
    values: list[float]
    order: list[int]  # grid indices by increasing ε
    clean_pred: Any
    reference: Any  # the labels, or (label-free) the clean prediction
    fgsm_pred: list
    robust_pred: list  # the worst case over the ensemble
    first_pred: list  # under the first member alone (APGD on the task's loss or cross-entropy)
    broken_by: list[torch.Tensor]  # per ε and image: the index into MEMBERS that broke it first, CLEAN or NONE
    square_query: list[torch.Tensor]  # per ε and image: the Square query that broke it, -1 where none did
    clean: float  # the metric on clean images (1.0 label-free: the reference is the prediction)
    robust: list[float]
    first: list[float]
    fgsm: list[float]
    zero_share: float  # share of images whose clean input gradient is all zero
    bad_share: float  # share of images whose clean input gradient is not finite
    # the task's side metrics the reference allows (instance masks: mask_map50): per ε under the worst case,
    # and clean (labelled data only; label-free the reference is the clean prediction)
    side: dict[str, list[float]] = field(default_factory=dict)
    side_clean: dict[str, float] = field(default_factory=dict)

    def broken_first(self, gi: int) -> dict[str, int]:
        """How many images each member broke first at the grid's ε number gi."""
        counts = torch.bincount(self.broken_by[gi][self.broken_by[gi] >= 0], minlength=len(MEMBERS))
        return {m: int(c) for m, c in zip(MEMBERS, counts)}


def sweep(
    ctx: Context,
    ens: Ensemble,
    engine: LinfAttack,
    grid: list[str],
    values: list[float],
    clean_pred,
    reference,
    bar,
    prior: Sweep | None = None,
    members: tuple[str, ...] | None = None,
    queries: int | None = None,
) -> Sweep:
    """Every batch attacked at every ε by the ensemble (or by `members`, on the images `prior` left unbroken)."""
    task, data = ctx.task, ctx.data
    order = sorted(range(len(grid)), key=lambda i: values[i])
    stream = "sweep" if prior is None else "again"

    def one_batch(b: int) -> dict:
        """Batch b at every ε (its draws seeded from the run seed and b alone: any rank may compute it)."""
        ens.generator.manual_seed(ctx.seed_for("attacks", stream, b))
        sl = slice(b * ctx.batch_size, (b + 1) * ctx.batch_size)
        x = data.images_at(sl, ctx.device)
        ref = task.take(reference, sl)
        grad, _, _ = engine.gradient(x, task.to(ref, ctx.device))  # one clean gradient serves FGSM at every ε
        finite = torch.isfinite(grad).flatten(1).all(1)
        out = {name: [None] * len(grid) for name in ("fgsm", "robust", "first", "by", "query")}
        out["bad"], out["zero"] = ~finite.cpu(), (finite & (grad.flatten(1).abs().amax(1) == 0)).cpu()
        clean = task.take(clean_pred, sl)
        before = None if prior is None else _batch_of(task, prior, sl)
        batch = (_classes if task.attack_stops_when_wrong else _task_score)(ens, x, ref, clean, values, order, before)
        for gi in order:
            with torch.no_grad():
                out["fgsm"][gi] = task.predict(ctx.adapter, engine.fgsm_from_gradient(x, grad, values[gi]))
            for name, value in zip(("robust", "first", "by", "query"), batch(gi, members, queries)):
                out[name][gi] = value
            bar.update(1)
        out["probabilities"] = ens.saw_probabilities
        return out

    batches = distributed.chunked(one_batch, -(-len(data) // ctx.batch_size), bar, len(grid))
    ens.saw_probabilities = any(b["probabilities"] for b in batches)  # on any rank's batches
    parts = {
        name: [[b[name][gi] for b in batches] for gi in range(len(grid))]
        for name in ("fgsm", "robust", "first", "by", "query")
    }
    zero_grad, bad_grad = [b["zero"] for b in batches], [b["bad"] for b in batches]
    joined = {
        name: [task.concat(p) if name in ("fgsm", "robust", "first") else torch.cat(p) for p in per]
        for name, per in parts.items()
    }
    if not task.attack_stops_when_wrong:  # mAP and mIoU pool over images: the set's worst case (pooled.py)
        joined["robust"], joined["by"], joined["query"] = lowest_per_eps(
            task, ctx.adapter, reference, clean_pred, order, *(joined[k] for k in ("robust", "first", "by", "query"))
        )
    score = lambda preds: [task.score(pred, reference, ctx.adapter) for pred in preds]  # noqa: E731
    return Sweep(
        grid=grid,
        values=values,
        order=order,
        clean_pred=clean_pred,
        reference=reference,
        fgsm_pred=joined["fgsm"],
        robust_pred=joined["robust"],
        first_pred=joined["first"],
        broken_by=joined["by"],
        square_query=joined["query"],
        first=score(joined["first"]),
        fgsm=score(joined["fgsm"]),
        zero_share=float(torch.cat(zero_grad).double().mean()),
        bad_share=float(torch.cat(bad_grad).double().mean()),
        **_scored(ctx, clean_pred, joined["robust"], reference),
    )


def _scored(ctx: Context, clean_pred, robust_pred: list, reference) -> dict[str, Any]:
    """Sweep's clean and worst-case figures: the task's metric, and its side metrics where the reference allows."""
    task, adapter = ctx.task, ctx.adapter
    robust = [task.scores(pred, reference, adapter) for pred in robust_pred]
    clean = task.scores(clean_pred, reference, adapter) if ctx.data.labelled else {}
    return {
        "clean": clean[task.metric] if ctx.data.labelled else 1.0,
        "robust": [r[task.metric] for r in robust],
        "side": {m: [r[m] for r in robust] for m in task.side_metrics if m in robust[0]},
        "side_clean": {m: clean[m] for m in task.side_metrics if m in clean},
    }


def _batch_of(task, s: Sweep, sl: slice) -> dict[str, list]:
    return {
        "robust": [task.take(p, sl) for p in s.robust_pred],
        "first": [task.take(p, sl) for p in s.first_pred],
        "by": [b[sl] for b in s.broken_by],
        "query": [q[sl] for q in s.square_query],
    }


def _classes(ens: Ensemble, x, ref, clean, values, order, before):
    """A classifier batch, swept from the largest ε down (see the module's note); returns gi -> results at ε gi."""
    out, robust_above = {}, torch.zeros(len(x), dtype=torch.bool)

    def at(gi, members, queries):
        if gi not in out:  # the first call is the largest ε: attack every ε from the top now
            for g in reversed(order):
                out[g] = _classes_at(ens, x, ref, clean, values[g], robust_above, before, g, members, queries)
        return out[gi]

    return at


def _classes_at(ens, x, ref, clean, eps, robust_above, before, gi, members, queries):
    n = len(x)
    pred, first = clean.clone(), clean.clone()
    by = torch.where(clean != ref, CLEAN, NONE)
    query = torch.full((n,), -1)
    todo = ~robust_above & (by == NONE)
    if before is not None:  # only what the earlier sweep left unbroken
        pred, first, by, query = (before[k][gi].clone() for k in ("robust", "first", "by", "query"))
        todo &= by == NONE
    rows = torch.nonzero(todo).flatten()
    if len(rows):
        o = ens.run(x[rows], ref[rows], eps, members, queries)
        with torch.no_grad():
            adv_pred = ens.adapter.predict(o.adv).cpu()
        pred[rows] = adv_pred
        by[rows] = o.broken_by
        query[rows] = o.square_query
        if before is None:
            first[rows] = torch.where(o.broken_by == MEMBERS.index("apgd"), adv_pred, clean[rows])
    robust_above |= by == NONE
    return pred, first, by, query


def _task_score(ens: Ensemble, x, ref, clean, values, order, before):
    """A detector or segmenter batch, swept from the smallest ε up; each image keeps its worst prediction so far."""
    task, k = ens.task, ens.adapter.num_classes
    out = {}

    def at(gi, members, queries):
        if gi not in out:
            worst = None
            for g in order:
                o = ens.run(x, ref, values[g], members, queries)
                with torch.no_grad():
                    pred = task.predict(ens.adapter, o.adv)
                    first = task.predict(ens.adapter, o.first) if before is None else before["first"][g]
                if before is not None:
                    pred, o.broken_by, o.square_query = _worse(task, k, ref, before, g, pred, o)
                score = task.image_score(pred, ref, k)
                if worst is not None:  # the adversarial of a smaller ε is one here too
                    keep = worst[0] < score
                    pred = task.concat([task.take(worst[1] if keep[i] else pred, [i]) for i in range(len(x))])
                    score = torch.where(keep, worst[0], score)
                    o.broken_by = torch.where(keep & (worst[2] >= 0), worst[2], o.broken_by)
                worst = (score, pred, o.broken_by)
                out[g] = (pred, first, o.broken_by, o.square_query)
        return out[gi]

    return at


def _worse(task, k, ref, before, g, pred, o):
    """The earlier sweep's prediction where it was worse for the model than this one's."""
    old = before["robust"][g]
    old_score, new_score = task.image_score(old, ref, k), task.image_score(pred, ref, k)
    keep_old = old_score <= new_score
    pred = task.concat([task.take(old if keep_old[i] else pred, [i]) for i in range(len(keep_old))])
    by = torch.where(keep_old | (before["by"][g] >= 0), before["by"][g], o.broken_by)
    query = torch.where(keep_old, before["query"][g], o.square_query)
    return pred, by, query


def min_eps(ctx: Context, ens: Ensemble, s: Sweep, subset: list[int], rounds: int, bar):
    """Per image of the subset: the smallest ε that breaks it (0 if wrong when clean), and whether
    it withstood the whole grid (then its value is the largest ε, a lower bound). Two numpy arrays.

    The worst case over the grid brackets each image's minimal ε; `rounds` of bisection, each one batched
    APGD over the images still searched, narrow the bracket (APGD alone: the bracket's top is the worst case's,
    and the other members cost several times more for the few images they add).
    """
    if not subset:
        return np.zeros(0), np.zeros(0, dtype=bool)
    task, k = ctx.task, ctx.adapter.num_classes
    idx = torch.tensor(subset)
    a_clean = task.image_score(s.clean_pred, s.reference, k)[idx]
    agree = [task.image_score(pred, s.reference, k) for pred in s.robust_pred]
    broken = torch.stack([agree[gi][idx] < BROKEN_SHARE * a_clean for gi in s.order])  # G x S
    ever = broken.any(0)
    first = broken.float().argmax(0)
    sorted_values = torch.tensor([s.values[gi] for gi in s.order], dtype=torch.float64)
    hi = torch.where(ever, sorted_values[first], sorted_values[-1])
    lo = torch.where(first > 0, sorted_values[(first - 1).clamp_min(0)], torch.zeros_like(hi))
    wrong_clean = a_clean <= 0
    rows = torch.nonzero(ever & ~wrong_clean).flatten()
    if len(rows) and rounds:
        rounds_done = [0]

        def broken_at(eps: torch.Tensor) -> torch.Tensor:
            def chunk_of(c: int) -> torch.Tensor:
                ens.generator.manual_seed(ctx.seed_for("attacks", "bisect", rounds_done[0], c))
                start = c * ctx.batch_size
                members = [subset[int(i)] for i in rows[start : start + ctx.batch_size]]
                x = ctx.data.images_at(members, ctx.device)
                budgets = eps[start : start + ctx.batch_size].to(ctx.device, x.dtype)
                bar.update(1)
                return ens.run(x, task.take(s.reference, members), budgets, ("apgd",)).broken.cpu()

            out = distributed.chunked(chunk_of, -(-len(rows) // ctx.batch_size), bar, 1)
            rounds_done[0] += 1
            return torch.cat(out)

        hi[rows] = bisect_min_eps(broken_at, lo[rows], hi[rows], rounds)
    result = torch.where(wrong_clean, torch.zeros_like(hi), hi)
    return result.numpy(), (~ever & ~wrong_clean).numpy()
