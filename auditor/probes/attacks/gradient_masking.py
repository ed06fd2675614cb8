"""Signs that an attack result overstates robustness (gradient masking, an under-converged attack).

The checks follow Athalye et al. 2018 ("Obfuscated gradients give a false sense of
security") and the flags AutoAttack raises (Croce & Hein 2020): a robust metric that
rises with ε, a one-step attack beating the iterative one, a stronger PGD still lowering
the metric, an unbounded budget that does not reach (near) zero, gradients that vanish or
are not finite, and a gradient-free attack succeeding where PGD failed. Each check is
one row of the report; any failed check sets the probe's `suspect_masking` metric to 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MARGIN = 0.01  # metric differences below this are noise for these checks
STRONGER_MARGIN = 0.05  # a stronger PGD lowering the metric by more than this (and two images): not converged
UNBOUNDED_SHARE = 0.1  # at ε = 1 the metric must fall below this share of clean
BAD_GRADIENT_SHARE = 0.05  # share of images with a zero or non-finite input gradient that is suspicious


@dataclass
class Check:
    name: str
    flagged: bool | None  # None: not run (with the reason in text)
    text: str

    def to_dict(self) -> dict:
        return asdict(self)


def monotone(grid: list[str], values: list[float], pgd: list[float]) -> Check:
    order = sorted(range(len(values)), key=lambda i: values[i])
    rises = [(grid[a], grid[b]) for a, b in zip(order, order[1:]) if pgd[b] > pgd[a] + MARGIN]
    if rises:
        pairs = ", ".join(f"{a} → {b}" for a, b in rises)
        return Check(
            "monotone in ε",
            True,
            f"the metric under PGD rises with ε ({pairs}): a larger budget can "
            "always do what a smaller one did, so the attack is not finding them",
        )
    return Check("monotone in ε", False, "the metric under PGD never rises with ε")


def fgsm_weaker(grid: list[str], pgd: list[float], fgsm: list[float], steps: int) -> Check:
    stronger = [g for g, a, f in zip(grid, pgd, fgsm) if f < a - MARGIN]
    if stronger:
        return Check(
            "FGSM no stronger than PGD",
            True,
            f"one-step FGSM beats {steps}-step PGD at ε={', '.join(stronger)}: PGD is under-converged or "
            "the loss surface is masked",
        )
    return Check("FGSM no stronger than PGD", False, "PGD is at least as strong as FGSM at every ε")


def stronger_pgd(eps: str, base: float, stronger: float, steps: int, restarts: int, n: int) -> Check:
    name = "more steps and restarts"
    detail = (
        f"at ε={eps} on {n} images: {base:.3f} with the probe's PGD, {stronger:.3f} with {steps} steps "
        f"× {restarts} restarts"
    )
    if stronger < base - max(STRONGER_MARGIN, 2 / max(n, 1)):  # two images can differ by chance on a small set
        return Check(name, True, detail + ": the attack has not converged; raise attacks.steps / attacks.restarts")
    return Check(name, False, detail)


def unbounded(value: float, clean: float, n: int) -> Check:
    name = "unbounded ε reaches zero"
    detail = f"at ε=1 (any image allowed) on {n} images the metric is {value:.3f} (clean {clean:.3f})"
    if value > UNBOUNDED_SHARE * clean + MARGIN:
        return Check(
            name,
            True,
            detail + ": an attack that may replace the whole image should reach (near) "
            "zero; the gradients do not lead anywhere",
        )
    return Check(name, False, detail)


def gradients(zero_share: float, nonfinite_share: float) -> Check:
    name = "input gradients usable"
    detail = f"{zero_share:.1%} of the images have an all-zero input gradient, {nonfinite_share:.1%} a non-finite one"
    if nonfinite_share > 0 or zero_share > BAD_GRADIENT_SHARE:
        return Check(
            name, True, detail + ": gradient attacks cannot move these images, so their robustness is not measured"
        )
    return Check(name, False, detail)


def gradient_free(eps: str, tried: int, broken: int, queries: int) -> Check:
    name = "gradient-free attack finds nothing PGD missed"
    if tried == 0:
        return Check(
            name, False, f"at ε={eps} PGD broke every image tried, so there was nothing left for the Square attack"
        )
    detail = f"at ε={eps} the Square attack ({queries} queries) broke {broken} of {tried} images that PGD did not"
    if broken > 0:
        return Check(name, True, detail + ": a black-box attack beating a white-box one points at masked gradients")
    return Check(name, False, detail)


def not_run(name: str, why: str) -> Check:
    return Check(name, None, why)
