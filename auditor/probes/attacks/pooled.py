"""The worst case of a detector's or segmenter's whole data set, where the metric pools over the images.

The ensemble keeps, per image, the adversarial with the lowest score of that image alone (ensemble.py), and
the sweep carries each image's worst prediction up the ε grid (sweep.py). A classifier's accuracy is the mean
of those per-image outcomes, so the per-image choice is the data set's worst case. mAP and mIoU are not means
of per-image scores: mIoU sums pixels over the images before it divides, mAP ranks every detection of the
set together. A Square adversarial with the lower per-image mIoU can add more union than it takes
intersection, and the data set's figure then ends above APGD's own (shapes-unet, 16 images, with Square,
4/255: 0.3746 against 0.3735). A worst case that is weaker than one of its members is not a worst case.

So, at each ε from the smallest up, the reported set is the one with the lowest data-set figure among:
the ensemble's per-image choice, APGD's own set, and the set reported at the ε below (its adversarials lie in
this ball too). Where the metric is a pooled ratio of per-image counts (mIoU, `stats.MeanIoU`), each image
then takes, in turn, whichever of those candidates lowers the pooled figure most (coordinate descent on
exact sums, until no image changes). The figure can only go down from the best whole set, so it is never
above APGD's, nor above the figure at a smaller ε.
"""

from __future__ import annotations

import torch

from auditor.probes.attacks.ensemble import BROKEN_SHARE, MEMBERS, NONE
from auditor.stats import MeanIoU

PASSES = 4  # coordinate descent: passes over the images at most (it settles in one or two)


def lowest_per_eps(task, adapter, reference, clean_pred, order, robust, first, by, query):
    """The lists robust, by and query (one entry per ε, grid order) with each ε's set replaced by the lowest of
    the candidates (see the module's note); `first` is APGD's own set per ε."""
    k = adapter.num_classes
    a_clean = task.image_score(clean_pred, reference, k)
    robust, by, query = list(robust), list(by), list(query)
    below = None
    for gi in order:
        apgd_broken = task.image_score(first[gi], reference, k) < BROKEN_SHARE * a_clean
        candidates = [
            (robust[gi], by[gi], query[gi]),
            (first[gi], torch.where(apgd_broken, MEMBERS.index("apgd"), NONE), torch.full_like(query[gi], -1)),
        ]
        if below is not None:
            candidates.append(below)
        estimates = [task.estimates(c[0], reference, adapter).get(task.metric) for c in candidates]
        # an estimate's value is the task's metric (tests/test_stats_tasks.py holds it to torchmetrics') at a
        # fraction of task.score's cost: a detector's mAP50 on 64 scenes takes 9 ms, torchmetrics' 0.46 s
        figures = [
            e.value if e is not None and e.value is not None else task.score(c[0], reference, adapter)
            for e, c in zip(estimates, candidates)
        ]
        best = min(range(len(candidates)), key=lambda i: (figures[i], i))  # ties keep the ensemble's own set
        pick = torch.full((len(a_clean),), best, dtype=torch.long)
        if all(isinstance(e, MeanIoU) for e in estimates):
            pick = _lowest_pooled_iou(estimates, pick)
        robust[gi], by[gi], query[gi] = _mixed(task, candidates, pick)
        below = (robust[gi], by[gi], query[gi])
    return robust, by, query


def _lowest_pooled_iou(counts: list[MeanIoU], pick: torch.Tensor) -> torch.Tensor:
    """Per image, which candidate: starting from `pick`, each image in turn takes the candidate whose pixel
    counts give the lowest mean IoU over the whole set, until a pass changes nothing."""
    inter = torch.stack([c.inter for c in counts])  # candidates x images x classes
    union = torch.stack([c.union for c in counts])
    rows = torch.arange(inter.shape[1])
    total_i, total_u = inter[pick, rows].sum(0), union[pick, rows].sum(0)
    current = MeanIoU.of_sums(total_i[None], total_u[None])[0]
    for _ in range(PASSES):
        changed = False
        for i in range(inter.shape[1]):
            # the pooled figure with image i swapped to each candidate, all candidates at once
            ti = total_i - inter[pick[i], i] + inter[:, i]
            tu = total_u - union[pick[i], i] + union[:, i]
            figures = MeanIoU.of_sums(ti, tu)
            c = int(figures.argmin())
            if figures[c] < current - 1e-12:
                total_i, total_u, current, pick[i], changed = ti[c], tu[c], figures[c], c, True
        if not changed:
            break
    return pick


def _mixed(task, candidates, pick: torch.Tensor):
    """The prediction, broken-by and Square-query of each image from the candidate `pick` names."""
    if bool((pick == pick[0]).all()):
        return candidates[int(pick[0])]
    pred = task.concat([task.take(candidates[int(c)][0], [i]) for i, c in enumerate(pick)])
    by = torch.stack([c[1] for c in candidates])[pick, torch.arange(len(pick))]
    query = torch.stack([c[2] for c in candidates])[pick, torch.arange(len(pick))]
    return pred, by, query
