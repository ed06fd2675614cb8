"""The attack ensemble: per image the worst case over several attacks (AutoAttack's rule, Croce & Hein 2020).

An image counts as robust at ε only if it survives every member; it leaves as soon as one breaks it,
so the later (dearer) members only see the images the earlier ones could not break. Members, in order:

- classifiers: APGD-CE (cross-entropy), APGD-T (targeted DLR towards each of the top runner-up classes
  in turn), Square (gradient-free, on the logit margin);
- detectors and segmenters: APGD on the task's per-image attack loss (`Task.attack_loss`: a detector's own
  training loss; a segmenter's pixels' Jensen-Shannon divergence from the reference), then Square on the task's
  per-image score (the share of the reference still found; ties broken by the loss).

`fast` runs the gradient members only; `standard` adds Square. Broken means misclassified (classifiers)
or, elsewhere, keeping less than half of the clean per-image score (BROKEN_SHARE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from auditor.probes.attacks.apgd import apgd, as_logits, cross_entropy, targeted_dlr, targets_for
from auditor.probes.attacks.square import square_linf

MEMBERS = ("apgd", "apgd-t", "square")  # broken_by indexes this
ENSEMBLES = {"fast": ("apgd", "apgd-t"), "standard": MEMBERS}
NORMS = ("linf", "l2")
BROKEN_SHARE = 0.5  # an image is broken when it keeps less than half of its clean agreement with the reference
CLEAN = -2  # broken_by: wrong on the clean image (nothing to attack)
NONE = -1  # broken_by: withstood every member

# member -> what the report calls it, per kind of task
LABELS = {"apgd": "APGD-CE", "apgd-t": "APGD-T", "square": "Square"}
TASK_LOSS_LABELS = {"apgd": "APGD ({loss})", "square": "Square (task score)"}


@dataclass(frozen=True)
class Budget:
    steps: int  # APGD iterations per run
    targets: int  # APGD-T: runner-up classes tried, one run each
    queries: int  # Square: model evaluations per image


@dataclass
class Outcome:
    """One batch attacked at ε: the worst-case image per image, whether it broke, and which member broke it
    first (an index into MEMBERS, CLEAN or NONE), and for the images Square broke, at which query."""

    adv: torch.Tensor
    broken: torch.Tensor
    broken_by: torch.Tensor
    square_query: torch.Tensor
    first: torch.Tensor | None = None  # detectors and segmenters: the first member's adversarial (its own figure)


class Ensemble:
    def __init__(self, adapter, task, members: tuple[str, ...], budget: Budget, norm: str = "linf", generator=None):
        # members a task has no use for are dropped: APGD-T needs classes
        self.members = tuple(m for m in members if task.attack_stops_when_wrong or m != "apgd-t")
        self.adapter, self.task, self.budget, self.norm, self.generator = adapter, task, budget, norm, generator
        self.saw_probabilities = False  # a classifier batch came out as probabilities (its log was attacked)

    def label(self, member: str) -> str:
        if self.task.attack_stops_when_wrong:
            return LABELS[member]
        return TASK_LOSS_LABELS[member].format(loss=self.task.attack_loss_name)

    def run(self, x: torch.Tensor, ref, eps, members: tuple[str, ...] | None = None, queries: int | None = None):
        """The batch x (pixel space, on the device) attacked at ε (one value, or one per image); ref on the CPU."""
        members = self.members if members is None else members
        eps = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
        eps = eps.expand(len(x)).clone() if eps.dim() == 0 else eps
        queries = self.budget.queries if queries is None else queries
        run = self._classes if self.task.attack_stops_when_wrong else self._task_score
        return run(x.detach(), ref, eps, members, queries)

    # ---- classifiers ------------------------------------------------------------------------------------

    def _classes(self, x, ref, eps, members, queries) -> Outcome:
        y = ref.to(x.device)
        with torch.no_grad():
            out = self.adapter(x)
        logits = as_logits(out)
        probabilities = logits is not out
        self.saw_probabilities |= probabilities
        broken = logits.argmax(1) != y
        broken_by = torch.where(broken, CLEAN, NONE).to(x.device)
        runners_up = logits.scatter(1, y[:, None], -math.inf).argsort(1, descending=True)
        adv, found_at = x.clone(), torch.full((len(x),), -1, device=x.device)

        def model(xr):
            o = self.adapter(xr)
            return o.clamp_min(1e-30).log() if probabilities else o

        def record(rows, adv_r, hit, member):
            adv[rows[hit]] = adv_r[hit]
            broken[rows[hit]] = True
            broken_by[rows[hit]] = MEMBERS.index(member)

        for member in members:
            rows = torch.nonzero(~broken).flatten()
            if member == "apgd" and len(rows):

                def ce(xr, r, yr=y[rows]):
                    z = model(xr)
                    return cross_entropy(z, yr[r]), z.argmax(1) != yr[r]

                record(rows, *apgd(ce, x[rows], eps[rows], self.budget.steps, self.norm, self.generator), member)
            elif member == "apgd-t":
                for t in range(targets_for(self.budget.targets, logits.shape[1])):
                    rows = torch.nonzero(~broken).flatten()
                    if not len(rows):
                        break

                    def dlr(xr, r, yr=y[rows], tr=runners_up[rows, t]):
                        z = model(xr)
                        return targeted_dlr(z, yr[r], tr[r]), z.argmax(1) != yr[r]

                    record(rows, *apgd(dlr, x[rows], eps[rows], self.budget.steps, self.norm, self.generator), member)
            elif member == "square" and len(rows):

                def margin(xr, r, yr=y[rows]):
                    z = model(xr)
                    other = z.scatter(1, yr[r][:, None], -math.inf).amax(1)
                    m = z.gather(1, yr[r][:, None])[:, 0] - other
                    return m, m < 0

                adv_r, hit, at = self._square(margin, x[rows], y[rows], eps[rows], queries)
                found_at[rows[hit]] = at[hit]
                record(rows, adv_r, hit, member)
        return Outcome(adv, broken, broken_by.cpu(), found_at.cpu())

    def _square(self, margin, x, y, eps, queries):
        if self.norm == "linf":
            return square_linf(margin, x, eps, queries, self.generator)
        return _art_square_l2(self.adapter, x, y, eps, queries, self.generator)

    # ---- detectors and segmenters -----------------------------------------------------------------------

    def _task_score(self, x, ref, eps, members, queries) -> Outcome:
        task, adapter, k = self.task, self.adapter, self.adapter.num_classes
        ref_dev = task.to(ref, x.device)
        with torch.no_grad():
            a_clean = task.image_score(task.predict(adapter, x), ref, k).to(x.device)
        can_break = a_clean > 0
        broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        broken_by = torch.full((len(x),), NONE, device=x.device)
        adv, found_at = x.clone(), torch.full((len(x),), -1, device=x.device)
        score, first = a_clean.clone(), x

        def image_score(xr, r):
            with torch.no_grad():
                return task.image_score(task.predict(adapter, xr), task.take(ref, r.cpu()), k).to(x.device)

        for member in members:
            if member == "apgd":

                def loss(xr, r):
                    return task.attack_loss(adapter, xr, task.take(ref_dev, r.cpu())), None

                rows = torch.arange(len(x), device=x.device)
                adv_r, _ = apgd(loss, x, eps, self.budget.steps, self.norm, self.generator, leave=False)
                s, first = image_score(adv_r, rows), adv_r
            elif member == "square":
                rows = torch.nonzero(~broken & can_break).flatten()
                if not len(rows):
                    continue

                def task_score(xr, r, rows=rows):
                    s = image_score(xr, rows[r])
                    with torch.no_grad():  # ties (a coarse score) go to the higher loss, squashed below 1e-4
                        loss = task.attack_loss(adapter, xr, task.take(ref_dev, rows[r].cpu()))
                        tie = torch.atan(loss) / math.pi + 0.5
                    return s - 1e-4 * tie, s < BROKEN_SHARE * a_clean[rows[r]]

                adv_r, _, at = square_linf(task_score, x[rows], eps[rows], queries, self.generator)
                s = image_score(adv_r, rows)
                found_at[rows] = torch.where(s < BROKEN_SHARE * a_clean[rows], at, found_at[rows])
            else:
                continue
            # APGD's adversarial stands wherever it is no better than the clean image: a per-image score is coarse
            # (an image's AP50 stays 1.0 while every confidence drops, which is what moves the data set's mAP), and
            # a tie given back to the clean image left the ensemble's mAP above APGD's own (0.770 vs 0.706 at
            # 1/255 on shapes-yolov8n). A later member replaces it only where it does strictly worse. (The data
            # set's pooled mAP or mIoU can still end above APGD's own set: the sweep then reports the lower, pooled.py.)
            worse = s <= score[rows] if member == "apgd" else s < score[rows]
            adv[rows[worse]], score[rows[worse]] = adv_r[worse], s[worse]
            newly = (score[rows] < BROKEN_SHARE * a_clean[rows]) & ~broken[rows]
            broken[rows[newly]] = True
            broken_by[rows[newly]] = MEMBERS.index(member)
        return Outcome(adv, broken, broken_by.cpu(), found_at.cpu(), first)


def _art_square_l2(adapter, x, y, eps, queries, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L2 Square for classifiers through ART's SquareAttack (its L2 proposal distribution is intricate and ART's is
    well kept; the L2 path is not the hot one). One ε per call, so images are grouped by their ε."""
    from art.attacks.evasion import SquareAttack  # ART adds ~1.5 s to every start: imported where used
    from art.estimators.classification import PyTorchClassifier

    estimator = PyTorchClassifier(
        model=adapter,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=adapter.num_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if x.device.type == "cuda" else "cpu",
    )
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=x.device)) if generator else 0
    np.random.seed(seed)  # ART draws its squares from numpy
    adv = x.clone()
    for value in torch.unique(eps).tolist():
        rows = torch.nonzero(eps == value).flatten()
        attack = SquareAttack(estimator, norm=2, eps=value, max_iter=queries, nb_restarts=1, verbose=False)
        out = attack.generate(x=x[rows].cpu().numpy(), y=y[rows].cpu().numpy())
        adv[rows] = torch.from_numpy(out).to(x.device, x.dtype)
    with torch.no_grad():
        hit = adapter(adv).argmax(1) != y
    return adv, hit, torch.where(hit, queries, -1)
