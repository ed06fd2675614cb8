"""Uncertainty: 95% intervals on the metrics, and paired tests of two runs' metrics on the same images.

A metric is an *estimate* over the audit's images. Proportions over images (accuracy, a success rate)
get Wilson's interval and keep each image's outcome, so that two runs on the same images can be
compared image by image (McNemar's exact test). Everything else (mIoU, mAP50, a relative score, a
probe's score) gets a percentile bootstrap over images.

The bootstrap resamples are *shared*: the resample weights depend only on the number of images and
a fixed seed, never on the run's seed. Every metric of a probe is computed on the same resamples
(so a score made of several metrics gets its interval from the same draws), and two runs on the same
images draw the same resamples too, so the difference of their replicates is a paired bootstrap of
the change (common random numbers). scipy.stats.bootstrap resamples one statistic at a time with its
own draws; sharing draws across metrics and runs is the reason this is written here.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

DRAWS = 500  # bootstrap resamples: the percentiles' Monte Carlo error is a few % of the interval's width
RESAMPLE_SEED = 20_17  # fixed, not the run's seed: two runs on the same images draw the same resamples
LEVEL = 0.95


def resample_weights(n: int, draws: int = DRAWS) -> torch.Tensor:
    """draws x n multinomial bootstrap counts (each row sums to n), from a seed that depends on nothing
    but n: any two runs over n images resample them alike."""
    if n == 0:
        return torch.zeros(draws, 0, dtype=torch.float64)
    g = torch.Generator().manual_seed(RESAMPLE_SEED + n)
    picks = torch.randint(n, (draws, n), generator=g)
    counts = torch.zeros(draws, n, dtype=torch.float64)
    return counts.scatter_add_(1, picks, torch.ones(draws, n, dtype=torch.float64))


def wilson(successes: int, trials: int, level: float = LEVEL) -> tuple[float, float] | None:
    """Wilson's score interval for a proportion (scipy's), None for no trials."""
    if trials == 0:
        return None
    from scipy.stats import binomtest  # imported here: scipy adds to every start of the program

    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def percentile_interval(replicates: torch.Tensor, level: float = LEVEL) -> tuple[float, float] | None:
    """The central `level` of the finite replicates; None when fewer than half are finite."""
    r = replicates[torch.isfinite(replicates)]
    if len(r) < max(1, len(replicates) // 2):
        return None
    lo, hi = torch.quantile(r.double(), torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(lo), float(hi)


# ---- estimates ---------------------------------------------------------------------------------------------


class Estimate:
    """A metric over n items (images), with what its interval and a paired test need."""

    value: float | None

    def replicates(self, weights: torch.Tensor) -> torch.Tensor:
        """The metric on each resample (weights: draws x n counts per item), NaN where undefined."""
        raise NotImplementedError

    def interval(self, weights: torch.Tensor) -> tuple[float, float] | None:
        return None if self.value is None else percentile_interval(self.replicates(weights))

    def outcomes(self) -> str | None:
        """Per item '1' / '0' (or '-': not counted) when the metric is a proportion of items; else None."""
        return None


def _float(t: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(t).detach().to("cpu", torch.float64).flatten()


@dataclass
class Ratio(Estimate):
    """sum(num) / sum(den) over items: a proportion of images (den 1 where the image counts, num 1 where it
    succeeds), a mean over images (den 1), or a mean over rows grouped by image (num: an image's rows'
    sum, den: its row count: resampling images keeps an image's rows together)."""

    num: torch.Tensor
    den: torch.Tensor
    # num counts successes among den trials (objects hidden of those found, maps hitting their object): at a
    # value of 0 or 1 every resample agrees and the bootstrap's interval shrinks to a point, so Wilson's over
    # the trials is used there instead
    proportion: bool = False
    value: float | None = field(init=False)

    def __post_init__(self):
        self.num, self.den = _float(self.num), _float(self.den)
        if self.num.shape != self.den.shape:
            raise ValueError(f"num and den differ in shape: {tuple(self.num.shape)} vs {tuple(self.den.shape)}")
        total = float(self.den.sum())
        self.value = float(self.num.sum()) / total if total > 0 else None

    @classmethod
    def of_flags(cls, flags: torch.Tensor, counted: torch.Tensor | None = None) -> Ratio:
        """The share of counted items whose flag is set (all items count by default)."""
        flags = _float(flags)
        counted = torch.ones_like(flags) if counted is None else _float(counted)
        return cls(flags * counted, counted)

    @classmethod
    def of_values(cls, values: torch.Tensor) -> Ratio:
        """The mean of one value per item; NaN values do not count."""
        values = _float(values)
        ok = torch.isfinite(values)
        return cls(torch.where(ok, values, 0.0), ok.double())

    @property
    def binary(self) -> bool:
        return bool(((self.den == 0) | (self.den == 1)).all() and ((self.num == 0) | (self.num == self.den)).all())

    def replicates(self, weights: torch.Tensor) -> torch.Tensor:
        return (weights @ self.num) / (weights @ self.den)  # 0 / 0: NaN, an undefined resample

    def interval(self, weights: torch.Tensor) -> tuple[float, float] | None:
        if self.value is None:
            return None
        if self.binary or (self.proportion and self.value in (0.0, 1.0)):
            return wilson(round(float(self.num.sum())), round(float(self.den.sum())))
        return super().interval(weights)

    def outcomes(self) -> str | None:
        if not self.binary:
            return None
        return "".join("-" if d == 0 else "1" if n else "0" for n, d in zip(self.num.tolist(), self.den.tolist()))


@dataclass
class MeanIoU(Estimate):
    """Mean over classes of intersection / union, both summed over images (classes with no union left out):
    inter and union are n x C pixel counts per image and class."""

    inter: torch.Tensor
    union: torch.Tensor
    value: float | None = field(init=False)

    def __post_init__(self):
        self.inter = torch.as_tensor(self.inter).to("cpu", torch.float64)
        self.union = torch.as_tensor(self.union).to("cpu", torch.float64)
        self.value = self.of_sums(self.inter.sum(0, keepdim=True), self.union.sum(0, keepdim=True))[0]
        self.value = None if math.isnan(self.value) else float(self.value)

    @staticmethod
    def of_sums(inter: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
        """Per row of class sums (rows x C intersections and unions), the mean IoU over classes with a union."""
        iou = torch.where(union > 0, inter / union.clamp_min(1e-12), float("nan"))
        return iou.nanmean(1)

    def replicates(self, weights: torch.Tensor) -> torch.Tensor:
        return self.of_sums(weights @ self.inter, weights @ self.union)


@dataclass
class Constant(Estimate):
    """A value that does not vary with the images (a label-free run's clean agreement with itself: 1)."""

    value: float | None

    def replicates(self, weights: torch.Tensor) -> torch.Tensor:
        return torch.full((len(weights),), float("nan") if self.value is None else self.value, dtype=torch.float64)

    def interval(self, weights: torch.Tensor) -> tuple[float, float] | None:
        return None


@dataclass
class Derived(Estimate):
    """A function of other estimates (a probe's score from its metrics), on the same resamples: fn takes one
    tensor per part (a value as a 0-d tensor, or the replicates) and returns the same shape."""

    fn: Callable[..., torch.Tensor]
    parts: Sequence[Estimate]
    value: float | None = field(init=False)

    def __post_init__(self):
        if any(p.value is None for p in self.parts):
            self.value = None
            return
        v = float(self.fn(*[torch.tensor(p.value, dtype=torch.float64) for p in self.parts]))
        self.value = v if math.isfinite(v) else None

    def replicates(self, weights: torch.Tensor) -> torch.Tensor:
        return self.fn(*[p.replicates(weights) for p in self.parts])


# ---- a probe's estimates, as results.json keeps them -------------------------------------------------------


class Estimates:
    """The estimates of one probe's metrics over the same n items: intervals, and what a paired test needs."""

    def __init__(self, n: int, items: Sequence[int] | None = None, draws: int = DRAWS):
        """n items; `items`: which of the data's images they are, where a probe measures a sample of them (its
        fingerprint goes with the paired entries, so that only runs that measured the same sample are paired)."""
        self.n, self.draws = n, draws
        self.items_id = None if items is None else _fingerprint(items)
        self._weights: torch.Tensor | None = None
        self.items: dict[str, Estimate] = {}

    @property
    def weights(self) -> torch.Tensor:
        if self._weights is None:
            self._weights = resample_weights(self.n, self.draws)
        return self._weights

    def add(self, key: str, estimate: Estimate) -> Estimate:
        self.items[key] = estimate
        return estimate

    def intervals(self) -> dict[str, list[float]]:
        out = {}
        for key, est in self.items.items():
            iv = est.interval(self.weights)
            if iv is not None:
                out[key] = [round(iv[0], 6), round(iv[1], 6)]
        return out

    def paired(self) -> dict[str, dict[str, str | int]]:
        """Per metric, for a paired test against another run on the same images: each item's outcome for a
        proportion, else the bootstrap replicates (minus the value, float16, base64) on the shared resamples."""
        out: dict[str, dict[str, str | int]] = {}
        for key, est in self.items.items():
            if est.value is None:
                continue
            bits = est.outcomes()
            if bits is not None:
                out[key] = {"outcomes": bits}
            else:
                out[key] = {"n": self.n, "replicates": encode(est.replicates(self.weights) - est.value)}
            if self.items_id is not None:
                out[key]["items"] = self.items_id
        return out

    def to_dict(self) -> dict:
        """What a ProbeResult keeps: `intervals` and `paired`."""
        return {"intervals": self.intervals(), "paired": self.paired()}


def _fingerprint(items: Sequence[int]) -> str:
    import hashlib

    return hashlib.sha256(",".join(str(int(i)) for i in items).encode()).hexdigest()[:16]


def encode(values: torch.Tensor) -> str:
    """float16, little-endian, base64 (NaN kept as NaN)."""
    return base64.b64encode(values.to(torch.float16).numpy().astype("<f2").tobytes()).decode("ascii")


def decode(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float64)


# ---- paired tests ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """Whether a change between two runs is beyond noise, and how that was judged."""

    beyond_noise: bool | None  # None: cannot tell (no intervals)
    p: float | None  # McNemar's p-value, where that was the test
    interval: tuple[float, float] | None  # the change's 95% interval (new - base), where bootstrapped
    test: str  # "McNemar", "paired bootstrap", "intervals (unpaired)" or "none"

    def describe(self) -> str:
        if self.beyond_noise is None:
            return "no interval"
        what = "beyond noise" if self.beyond_noise else "within noise"
        if self.p is not None:
            return f"{what} (McNemar p={self.p:.2g})"
        if self.interval is not None:
            return f"{what} ({self.test}: {self.interval[0]:+.4f} to {self.interval[1]:+.4f})"
        return f"{what} ({self.test})"


def mcnemar(base: str, new: str) -> tuple[float, int, int]:
    """Exact McNemar test on two runs' per-image outcomes ('1', '0', '-'): (p, base-only, new-only successes)."""
    b = sum(1 for x, y in zip(base, new) if x == "1" and y == "0")
    c = sum(1 for x, y in zip(base, new) if x == "0" and y == "1")
    if b + c == 0:
        return 1.0, b, c
    from scipy.stats import binomtest

    return float(binomtest(b, b + c, 0.5).pvalue), b, c


def paired_change(
    base_value: float, new_value: float, base: dict | None, new: dict | None, alpha: float = 1 - LEVEL
) -> Change | None:
    """The paired test of one metric, from the two runs' `paired` entries; None when they cannot be paired."""
    if not base or not new or base.get("items") != new.get("items"):
        return None  # not measured on the same items
    if "outcomes" in base and "outcomes" in new and len(base["outcomes"]) == len(new["outcomes"]):
        p, _, _ = mcnemar(base["outcomes"], new["outcomes"])
        return Change(p < alpha, p, None, "McNemar")
    if "replicates" in base and "replicates" in new and base.get("n") == new.get("n"):
        a, b = decode(base["replicates"]) + base_value, decode(new["replicates"]) + new_value
        if len(a) != len(b):
            return None
        d = b - a
        d = d[np.isfinite(d)]
        if len(d) < len(a) // 2:
            return None
        lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
        return Change(not (lo <= 0 <= hi), None, (float(lo), float(hi)), "paired bootstrap")
    return None


def unpaired_change(
    base_value: float, new_value: float, base_iv: Sequence[float] | None, new_iv: Sequence[float] | None
) -> Change:
    """From the two intervals alone (different images): a normal approximation, each half-width 1.96 SE."""
    if base_iv is None or new_iv is None:
        return Change(None, None, None, "none")
    se = math.hypot((base_iv[1] - base_iv[0]) / (2 * 1.96), (new_iv[1] - new_iv[0]) / (2 * 1.96))
    diff = new_value - base_value
    half = 1.96 * se
    return Change(abs(diff) > half, None, (diff - half, diff + half), "intervals (unpaired)")
