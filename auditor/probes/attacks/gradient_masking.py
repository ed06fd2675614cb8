"""Signs that an attack result overstates robustness (gradient masking, an under-converged attack).

The checks follow Athalye et al. 2018 ("Obfuscated gradients give a false sense of
security") and the flags AutoAttack raises (Croce & Hein 2020): APGD alone rising with ε, a one-step
attack beating the ensemble, gradients that vanish or are not finite, a stronger ensemble still lowering
the metric, an unbounded budget that does not reach (near) zero, and the gradient-free Square attack
breaking images the gradient attacks left. Each check is one row of the report. When any fails, the
probe runs Square on every image at every ε with a budget that converges and the verdict is SUSPECT.

The first four read the sweep (`from_sweep`); the others attack a seeded subset again (`attack_again`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from auditor import distributed
from auditor.data import seeded_subset
from auditor.probes.attacks.ensemble import MEMBERS, NONE, Budget, Ensemble
from auditor.probes.attacks.sweep import Sweep
from auditor.probes.base import Context

MARGIN = 0.01  # metric differences below this are noise for these checks
STRONGER_MARGIN = 0.05  # a stronger ensemble lowering the metric by more than this (and two images): not converged
UNBOUNDED_SHARE = 0.1  # at ε = 1 the metric must fall below this share of clean
BAD_GRADIENT_SHARE = 0.05  # share of images with a zero or non-finite input gradient that is suspicious

GRADIENT_FREE_SHARE = 0.05  # Square breaking more than this share of the images it tried (and two): masked
MONOTONE = "monotone in ε"
FGSM_WEAKER = "one-step attack no stronger than the ensemble"
GRADIENTS = "input gradients usable"
STRONGER = "twice the steps"
UNBOUNDED = "unbounded ε reaches zero"
GRADIENT_FREE = "gradient-free attack finds nothing the gradient attacks missed"
LOGITS = "outputs are logits"


@dataclass
class Check:
    name: str
    flagged: bool | None  # None: not run (with the reason in text)
    text: str

    def to_dict(self) -> dict:
        return asdict(self)


def monotone(grid: list[str], values: list[float], first: list[float]) -> Check:
    order = sorted(range(len(values)), key=lambda i: values[i])
    rises = [(grid[a], grid[b]) for a, b in zip(order, order[1:]) if first[b] > first[a] + MARGIN]
    if rises:
        pairs = ", ".join(f"{a} → {b}" for a, b in rises)
        return Check(
            MONOTONE,
            True,
            f"the metric under APGD rises with ε ({pairs}): a larger budget can "
            "always do what a smaller one did, so the attack is not finding them",
        )
    return Check(MONOTONE, False, "the metric under APGD never rises with ε")


def fgsm_weaker(grid: list[str], robust: list[float], fgsm: list[float]) -> Check:
    stronger = [g for g, a, f in zip(grid, robust, fgsm) if f < a - MARGIN]
    if stronger:
        return Check(
            FGSM_WEAKER,
            True,
            f"the one-step attack beats the ensemble at ε={', '.join(stronger)}: the iterative attacks are "
            "under-converged or the loss surface is masked",
        )
    return Check(FGSM_WEAKER, False, "the ensemble is at least as strong as the one-step attack at every ε")


def stronger(eps: str, base: float, strong: float, budget: Budget, n: int) -> Check:
    detail = f"at ε={eps} on {n} images: {base:.3f} with the probe's ensemble, {strong:.3f} with {budget.steps} steps"
    if strong < base - max(STRONGER_MARGIN, 2 / max(n, 1)):  # two images can differ by chance on a small set
        return Check(STRONGER, True, detail + ": the attack has not converged; raise attacks.steps")
    return Check(STRONGER, False, detail)


def unbounded(value: float, clean: float, n: int, eps: str, noise: float) -> Check:
    """`noise`: the metric on uniform noise images. Where noise keeps it as high, the prediction hardly depends on
    the input (a constant model): nothing to move, which is not masking."""
    detail = f"at ε={eps} (any image allowed) on {n} images the metric is {value:.3f} (clean {clean:.3f})"
    if value > UNBOUNDED_SHARE * clean + MARGIN and noise > UNBOUNDED_SHARE * clean + MARGIN:
        return Check(
            UNBOUNDED,
            False,
            detail + f"; on noise images it is {noise:.3f} too: the prediction hardly depends on the input, so there "
            "is nothing for an attack to move (not masking)",
        )
    if value > UNBOUNDED_SHARE * clean + MARGIN:
        return Check(
            UNBOUNDED,
            True,
            detail + ": an attack that may replace the whole image should reach (near) "
            "zero; the gradients do not lead anywhere",
        )
    return Check(UNBOUNDED, False, detail)


def gradients(zero_share: float, nonfinite_share: float) -> Check:
    detail = f"{zero_share:.1%} of the images have an all-zero input gradient, {nonfinite_share:.1%} a non-finite one"
    if nonfinite_share > 0 or zero_share > BAD_GRADIENT_SHARE:
        return Check(
            GRADIENTS, True, detail + ": gradient attacks cannot move these images, so their robustness is not measured"
        )
    return Check(GRADIENTS, False, detail)


def gradient_free(where: str, tried: int, broken: int, queries: int) -> Check:
    if tried == 0:
        return Check(GRADIENT_FREE, False, f"{where} the gradient attacks broke every image, so Square had none left")
    detail = (
        f"{where} the Square attack ({queries} queries) broke {broken} of the {tried} images (one per ε) the gradient "
        "attacks left standing"
    )
    if broken >= max(2, GRADIENT_FREE_SHARE * tried):
        return Check(
            GRADIENT_FREE, True, detail + ": a black-box attack beating white-box ones points at masked gradients"
        )
    return Check(GRADIENT_FREE, False, detail)


def logits(saw_probabilities: bool) -> Check:
    if saw_probabilities:
        return Check(
            LOGITS,
            True,
            "the model outputs probabilities (non-negative rows summing to 1): their loss saturates and its "
            "gradient vanishes, a classic way to mask an attack; the attacks used their logarithm instead",
        )
    return Check(LOGITS, False, "the model outputs logits (or scores that are not probabilities)")


def not_run(name: str, why: str) -> Check:
    return Check(name, None, why)


def check_eps(s: Sweep) -> int:
    """The grid ε whose metric is nearest half of clean: where a weak attack shows most."""
    return min(s.order, key=lambda gi: (abs(s.robust[gi] - 0.5 * s.clean), s.values[gi]))


def from_sweep(s: Sweep, ens: Ensemble) -> list[Check]:
    """The checks the sweep itself answers: APGD monotone in ε, the one-step attack no stronger, usable gradients,
    and (when Square is a member) whether it broke what the gradient members left."""
    checks = [
        monotone(s.grid, s.values, s.first),
        fgsm_weaker(s.grid, s.robust, s.fgsm),
        gradients(s.zero_share, s.bad_share),
    ]
    if ens.task.attack_stops_when_wrong:
        checks.append(logits(ens.saw_probabilities))
    if "square" in ens.members:
        square = MEMBERS.index("square")
        tried = sum(int(((b == square) | (b == NONE)).sum()) for b in s.broken_by)
        broken = sum(int((b == square).sum()) for b in s.broken_by)
        checks.append(gradient_free("over the grid", tried, broken, ens.budget.queries))
    return checks


def attack_again(ctx: Context, ens: Ensemble, s: Sweep, check_images: int) -> list[Check]:
    """The checks that attack `check_images` seeded images again: the gradient members with twice the steps at the
    check ε (see
    check_eps), an unbounded budget, and (when Square is not a member) Square on the images the ensemble left."""
    names = (STRONGER, UNBOUNDED) + (() if "square" in ens.members else (GRADIENT_FREE,))
    if check_images == 0:
        return [not_run(n, "skipped: attacks.check_images = 0") for n in names]
    task, adapter, gi = ctx.task, ctx.adapter, check_eps(s)
    members = seeded_subset(len(ctx.data), check_images, ctx.seed + 1)
    ref = task.take(s.reference, members)
    base = task.score(task.take(s.robust_pred[gi], members), ref, adapter)
    clean = task.score(task.take(s.clean_pred, members), ref, adapter)
    b = ens.budget
    strong_budget = Budget(2 * b.steps, b.targets, b.queries)
    strong = Ensemble(adapter, task, ens.members, strong_budget, ens.norm, ens.generator)
    gradient_members = tuple(m for m in ens.members if m != "square")
    big = 1.0 if ens.norm == "linf" else float(torch.tensor(ctx.data.images_at([0]).shape[1:]).prod().sqrt())
    strong_pred, _ = _attack(ctx, strong, members, ref, s.values[gi], gradient_members, "stronger")
    # at least 20 steps: a budget cut short for speed (attacks.steps=3) must not read as an attack leading nowhere
    far = Ensemble(adapter, task, ens.members, Budget(max(b.steps, 20), b.targets, b.queries), ens.norm, ens.generator)
    unbounded_pred, _ = _attack(ctx, far, members, ref, big, ("apgd",), "unbounded")
    noise = task.score(_noise_predictions(ctx, len(members)), ref, adapter)
    checks = [
        stronger(s.grid[gi], base, task.score(strong_pred, ref, adapter), strong_budget, len(members)),
        unbounded(task.score(unbounded_pred, ref, adapter), clean, len(members), f"{big:.3g}", noise),
    ]
    if "square" not in ens.members:
        held = [i for i, m in enumerate(members) if int(s.broken_by[gi][m]) == NONE]
        held_members, held_ref = [members[i] for i in held], task.take(ref, held)
        _, broken = _attack(ctx, ens, held_members, held_ref, s.values[gi], ("square",), "gradient-free")
        checks.append(gradient_free(f"at ε={s.grid[gi]} on {len(members)} images", len(held), broken, b.queries))
    return checks


@torch.no_grad()
def _noise_predictions(ctx: Context, n: int):
    """The model's predictions on n seeded uniform noise images of the data's shape."""
    shape = ctx.data.images_at([0]).shape[1:]
    noise = torch.rand((n, *shape), generator=torch.Generator().manual_seed(ctx.seed)).to(ctx.device)
    return ctx.task.concat(
        [ctx.task.predict(ctx.adapter, noise[i : i + ctx.batch_size]) for i in range(0, n, ctx.batch_size)]
    )


def _attack(ctx: Context, ens: Ensemble, members: list[int], ref, eps: float, which: tuple[str, ...], check: str):
    """Predictions on `members` attacked at ε by the members `which`, and how many of them broke; each batch's
    draws seeded from the run seed, the check's name and the batch alone."""
    task = ctx.task

    def chunk_of(c: int):
        ens.generator.manual_seed(ctx.seed_for("attacks", check, c))
        start = c * ctx.batch_size
        chunk = members[start : start + ctx.batch_size]
        x = ctx.data.images_at(chunk, ctx.device)
        o = ens.run(x, task.take(ref, slice(start, start + len(chunk))), eps, which)
        with torch.no_grad():
            return task.predict(ctx.adapter, o.adv), int(o.broken.sum())

    parts = distributed.chunked(chunk_of, -(-len(members) // ctx.batch_size))
    preds, broken = [p for p, _ in parts], sum(b for _, b in parts)
    return (task.concat(preds) if preds else None), broken


def suspect_line(checks: list[Check], masked) -> str | None:
    """The verdict's one line when a masking check failed, else None."""
    if masked is None:
        return None
    failed = ", ".join(c.name for c in checks if c.flagged)
    return (
        f"gradient masking suspected ({failed}): the gradient-free Square attack ran on every image at every ε "
        f"({masked.queries} queries each) and the figures are its worst case"
    )
