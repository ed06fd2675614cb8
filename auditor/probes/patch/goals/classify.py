"""Classifiers: a universal patch that turns any image into the target class (targeted) or away from its own
class (untargeted), anywhere in the image (Brown et al. 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from auditor.data import seeded_subset
from auditor.probes.patch.details import ClassifyRow, Wording, scale_label
from auditor.probes.patch.figures import CLASSES, Gallery
from auditor.probes.patch.goals.base import Examples, Goal, Scored, Shown, rate, severity
from auditor.probes.patch.training import away_from
from auditor.results import Finding
from auditor.stats import Ratio
from auditor.targets import class_targets


class ClassifyGoal(Goal):
    wording = Wording(
        success="Targeted success rate",
        area="image",
        axis="success rate (held-out images)",
        cam="the class the patched image is given",
    )
    modes = ("untargeted", "targeted")
    scale_metrics = ("success_rate", "untargeted_success_rate")
    panels = CLASSES
    row = ClassifyRow
    default_steps, default_rows = 150, 64
    targeted = True

    def loss(self, out, idx, cover, mode):
        if mode == "targeted":
            return F.cross_entropy(out, torch.full_like(idx, self.target), reduction="none")
        return away_from(out, self.clean[idx])

    def outcome(self, x, cover):
        return self.adapter(x).argmax(1)

    def success(self, mode, outcome, rows) -> Ratio:
        """Targeted: turned into the target, among the images not predicted as it already; untargeted: changed,
        among the images the model gets right (label-free: all)."""
        clean = self.clean[rows]
        if mode == "targeted":
            return Ratio.of_flags(outcome == self.target, clean != self.target)
        return Ratio.of_flags(outcome != clean, clean == self.reference[rows])

    def score(self, runs, scales) -> Scored:
        clean, t = self.clean, self.target
        can_turn = clean != t  # targeted: images not predicted as the target already
        correct = clean == self.reference  # untargeted: images the model gets right (label-free: all)
        every = torch.arange(len(self), device=clean.device)
        metrics, rows, estimates = {}, [], {}
        for k, (s, side) in enumerate(zip(scales, self.patch_sides(scales))):
            tgt, unt, rnd = runs["targeted"][k], runs["untargeted"][k], runs["random"][k]
            row = ClassifyRow(
                scale_label(s),
                f"{side}×{side}",
                turned=rate(tgt == t, can_turn),
                random_turned=rate(rnd == t, can_turn),
                changed=rate(unt != clean, correct),
                random_changed=rate(rnd != clean, correct),
            )
            metrics[f"success_rate@scale={s:g}"] = row.turned
            metrics[f"untargeted_success_rate@scale={s:g}"] = row.changed
            estimates[f"success_rate@scale={s:g}"] = self.success("targeted", tgt, every)
            estimates[f"untargeted_success_rate@scale={s:g}"] = self.success("untargeted", unt, every)
            rows.append(row)
        name = self.names[t]
        return Scored(
            scales=scales,
            rows=rows,
            columns=["patch area", "patch px", f"targeted: → {name}", "random patch", "untargeted", "random patch"],
            labels={"targeted": f"targeted → {name}", "untargeted": "untargeted"},
            metrics=metrics,
            runs=runs,
            estimates=estimates,
        )

    def findings(self, scored, score_scale):
        row: ClassifyRow = scored.rows[scored.scales.index(score_scale)]
        can_turn, correct = int((self.clean != self.target).sum()), int((self.clean == self.reference).sum())
        findings = []
        if row.turned is not None:
            findings.append(
                Finding(
                    severity(row.turned),
                    f"a patch covering {scale_label(score_scale)} of the image "
                    f"turns {row.turned:.0%} of {can_turn} held-out images into "
                    f"{self.names[self.target]!r} (a random patch of that size: "
                    f"{row.random_turned:.0%})",
                    key=True,
                )
            )
        if row.changed is not None:
            which = "correctly classified " if self.labelled else ""
            findings.append(
                Finding(
                    "info",
                    f"untargeted, a patch of the same size changes the prediction of "
                    f"{row.changed:.0%} of {correct} {which}held-out images (a random patch: "
                    f"{row.random_changed:.0%})",
                )
            )
        return findings

    def gallery(self, patches, scored, ask: Examples) -> Gallery | None:
        """Held-out images the targeted patch turns (failures too where there are too few successes)."""
        can_turn = self.clean != self.target
        turned = torch.nonzero((scored.runs["targeted"][ask.k] == self.target) & can_turn).flatten()
        pick = _seeded_pick(turned, ask.n, ask.seed)
        if len(pick) < ask.n:
            rest = torch.nonzero(can_turn & ~torch.isin(torch.arange(len(self), device=can_turn.device), pick))
            pick = torch.cat([pick, _seeded_pick(rest.flatten(), ask.n - len(pick), ask.seed)]).sort().values
        if len(pick) == 0:
            return None
        x, cover = self.replay(patches["targeted"][ask.k], ask.k, pick)
        with torch.no_grad():
            before, after = self.clean[pick], self.adapter(x).argmax(1)
        titles = []
        for i, a, b in zip(pick.tolist(), before.tolist(), after.tolist()):
            truth = self.names[int(self.reference[i])]
            titles.append(
                (
                    self.names[a] + (f" (true {truth})" if self.labelled and truth != self.names[a] else ""),
                    f"→ {self.names[b]}",
                    a != b,
                )
            )
        shown = Shown(x, cover, before.cpu().tolist(), after.cpu().tolist(), titles, lambda: class_targets(after))
        return self.as_gallery(pick, shown, ask.with_cam)


def _seeded_pick(items: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n of the ascending `items`, drawn with the seed, ascending."""
    return items[torch.tensor(seeded_subset(len(items), n, seed), dtype=torch.long, device=items.device)]
