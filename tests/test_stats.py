"""Intervals and paired tests (auditor/stats.py, auditor/noise.py): coverage over simulated draws with a known
truth, and runs that differ by noise told apart from runs that differ by a real drop (diff and gates).

Simulations only: no audit runs, so these are fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auditor.compare import diff_results
from auditor.gates import evaluate, parse_rule
from auditor.results import ProbeResult, Results
from auditor.stats import (
    Derived,
    Estimates,
    MeanIoU,
    Ratio,
    mcnemar,
    paired_change,
    resample_weights,
    wilson,
)

SIMULATIONS = 2000  # Monte Carlo SE of a 95% coverage: 0.5 percentage point


def _covered(lo: np.ndarray, hi: np.ndarray, truth: float) -> float:
    return float(np.mean((lo <= truth) & (truth <= hi)))


def test_wilson_covers_a_known_proportion_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    for p, n in ((0.3, 200), (0.9, 150)):
        ks = rng.binomial(n, p, SIMULATIONS)
        bounds = np.array([wilson(int(k), n) for k in ks])
        assert 0.93 <= _covered(bounds[:, 0], bounds[:, 1], p) <= 0.97


def _bootstrap_bounds(estimates: list, weights: torch.Tensor) -> np.ndarray:
    return np.array([e.interval(weights) for e in estimates])


def test_bootstrap_covers_a_known_mean_and_ratio_95_percent_of_the_time():
    """Skewed per-image values (Beta(2, 5), mean 2/7) and a ratio of two means (what a relative score is), over
    simulated sets of 120 images, each resampled with the shared weights."""
    gen = torch.Generator().manual_seed(2)
    n = 120
    w = resample_weights(n)
    beta = torch.distributions.Beta(torch.tensor(2.0), torch.tensor(5.0))
    torch.manual_seed(3)
    values = beta.sample((SIMULATIONS, n)).double()
    means = [Ratio.of_values(v) for v in values]
    assert 0.93 <= _covered(*_bootstrap_bounds(means, w).T, 2 / 7) <= 0.97
    # ratio of means: shifted accuracy (p = 0.6) over clean accuracy (p = 0.8) per image, truth 0.75
    clean = (torch.rand(SIMULATIONS, n, generator=gen) < 0.8).double()
    shifted = clean * (torch.rand(SIMULATIONS, n, generator=gen) < 0.75).double()
    ratios = [
        Derived(lambda c, s: s / c, [Ratio.of_flags(c), Ratio.of_flags(s)]) for c, s in zip(clean[:800], shifted[:800])
    ]
    assert 0.93 <= _covered(*_bootstrap_bounds(ratios, w).T, 0.75) <= 0.97


def test_mean_iou_interval_covers_the_truth_of_a_simulated_segmenter():
    """Per image and class, pixel intersections and unions drawn around a true IoU of 0.6 per class."""
    gen = torch.Generator().manual_seed(4)
    n, classes, sims = 60, 3, 600
    w = resample_weights(n)
    union = torch.randint(200, 2000, (sims, n, classes), generator=gen).double()
    inter = torch.distributions.Binomial(union, torch.full_like(union, 0.6)).sample()
    bounds = np.array([MeanIoU(i, u).interval(w) for i, u in zip(inter, union)])
    assert 0.93 <= _covered(bounds[:, 0], bounds[:, 1], 0.6) <= 0.97


def test_resamples_depend_on_the_number_of_images_only():
    assert torch.equal(resample_weights(50), resample_weights(50))
    assert not torch.equal(resample_weights(50)[:, :49], resample_weights(49))
    assert torch.all(resample_weights(37).sum(1) == 37)


def test_a_proportion_keeps_each_images_outcome_and_a_mean_its_replicates():
    flags = torch.tensor([1, 0, 1, 1])
    counted = torch.tensor([1, 1, 0, 1])
    est = Estimates(4)
    est.add("accuracy", Ratio.of_flags(flags, counted))
    est.add("miou", Ratio.of_values(torch.tensor([0.2, 0.4, float("nan"), 0.9])))
    paired = est.paired()
    assert paired["accuracy"] == {"outcomes": "10-1"}
    assert set(paired["miou"]) == {"n", "replicates"}
    assert est.items["miou"].value == pytest.approx(0.5)
    assert est.intervals()["accuracy"] == pytest.approx(list(wilson(2, 3)), abs=1e-6)


def test_mcnemar_counts_only_the_images_that_changed():
    p, b, c = mcnemar("1111000011", "1111000011")
    assert (p, b, c) == (1.0, 0, 0)
    p, b, c = mcnemar("1" * 30 + "0" * 70, "0" * 30 + "0" * 70)  # 30 images lost, none gained
    assert (b, c) == (30, 0) and p < 1e-6


# ---- runs that differ by noise, and by a real drop -------------------------------------------------------


def _flags(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    return (rng.random(n) < p).astype(int)


def _run(flags: np.ndarray, digest: str = "same-images") -> Results:
    """A classifier run whose attacks probe measured robust accuracy as these per-image flags; its score is that
    accuracy over a clean accuracy of 1."""
    n = len(flags)
    est = Estimates(n)
    robust = est.add("robust_accuracy@linf=0.1", Ratio.of_flags(torch.tensor(flags)))
    est.add("score", Derived(lambda r: r, [robust]))
    probe = ProbeResult(
        status="ok",
        score=robust.value,
        metrics={"robust_accuracy@linf=0.1": robust.value},
        **est.to_dict(),
    )
    return Results(
        model={"name": "net", "task": "classify", "source": "zoo"},
        data={"name": "digits", "n": n, "labelled": True, "digest": digest},
        run={"device": "cpu", "seed": 0, "seconds": 1.0, "version": "0"},
        probes={"attacks": probe},
    )


@pytest.fixture
def three_runs():
    """A base run; one that differs from it by noise (another seed: 8 images flip each way); one with a real drop
    (30 images of the 400 lose, 2 gain): about the same size of change in the first case as a sloppy gate allows."""
    rng = np.random.default_rng(5)
    base = _flags(rng, 400, 0.5)
    noise = base.copy()
    ones, zeros = np.flatnonzero(base == 1), np.flatnonzero(base == 0)
    noise[rng.choice(ones, 8, replace=False)] = 0
    noise[rng.choice(zeros, 6, replace=False)] = 1
    drop = base.copy()
    drop[rng.choice(ones, 30, replace=False)] = 0
    drop[rng.choice(zeros, 2, replace=False)] = 1
    return _run(base), _run(noise), _run(drop)


def test_diff_tells_noise_from_a_real_drop(three_runs):
    base, noise, drop = three_runs
    for new, expected in ((noise, "within"), (drop, "beyond")):
        d = diff_results(base, new, max_drop=0.0, metrics="attacks.*", significant=True)
        rows = {r.key: r for r in d.rows}
        for key in ("attacks.robust_accuracy@linf=0.1", "attacks.score"):
            assert rows[key].result == "worse"
            assert rows[key].noise_text == expected, (key, rows[key].noise)
        assert rows["attacks.robust_accuracy@linf=0.1"].noise.test == "McNemar"
        assert rows["attacks.score"].noise.test == "paired bootstrap"
        assert d.exit_code == (0 if expected == "within" else 1)
    # without --significant, any drop past --max-drop fails, noise or not
    assert diff_results(base, noise, max_drop=0.0, metrics="attacks.*").exit_code == 1


def test_unpaired_runs_fall_back_to_the_intervals(three_runs):
    base, noise, drop = three_runs
    other = _run(np.array([int(c) for c in drop.probes["attacks"].paired["robust_accuracy@linf=0.1"]["outcomes"]]), "x")
    row = next(r for r in diff_results(base, other).rows if r.key == "attacks.robust_accuracy@linf=0.1")
    assert row.noise.test == "intervals (unpaired)"
    # 0.5 vs 0.43 on 400 images each: the unpaired test is less sure than the paired one, but still calls it
    assert row.noise_text == "beyond"
    noisy = _run(
        np.array([int(c) for c in noise.probes["attacks"].paired["robust_accuracy@linf=0.1"]["outcomes"]]), "x"
    )
    row = next(r for r in diff_results(base, noisy).rows if r.key == "attacks.robust_accuracy@linf=0.1")
    assert row.noise_text == "within"


def test_a_significant_drop_rule_fails_only_on_a_change_beyond_noise(three_runs):
    base, noise, drop = three_runs
    rule = parse_rule("attacks.score significant drop <= 0.001")
    plain = parse_rule("attacks.score drop <= 0.001")
    (within,) = evaluate([rule], noise, base)
    assert within.passed and "within noise" in within.message
    assert not evaluate([plain], noise, base)[0].passed
    (beyond,) = evaluate([rule], drop, base)
    assert not beyond.passed and "beyond noise" in beyond.message


def test_paired_bootstrap_needs_the_same_items():
    est = Estimates(3, items=[0, 1, 2])
    est.add("m", Ratio.of_values(torch.tensor([0.1, 0.5, 0.9])))
    other = Estimates(3, items=[0, 1, 3])
    other.add("m", Ratio.of_values(torch.tensor([0.1, 0.5, 0.9])))
    assert paired_change(0.5, 0.5, est.paired()["m"], other.paired()["m"]) is None
    assert paired_change(0.5, 0.5, est.paired()["m"], est.paired()["m"]).beyond_noise is False


def test_a_proportion_at_its_edge_keeps_an_interval():
    """Maps that all hit their object, two rows per image: every resample says 1.0, yet 20 hits do not prove a
    hit rate of 1 (Wilson's lower bound over the 20 rows)."""
    hits = Ratio(torch.full((10,), 2.0), torch.full((10,), 2.0), proportion=True)
    lo, hi = hits.interval(resample_weights(10))
    assert hi == pytest.approx(1.0) and lo == pytest.approx(wilson(20, 20)[0]) and lo < 0.9
    plain = Ratio(torch.full((10,), 2.0), torch.full((10,), 2.0))  # a mean that happens to be 1: no such claim
    assert plain.interval(resample_weights(10)) == (1.0, 1.0)


def test_the_bootstrap_agrees_with_scipys_on_a_mean():
    """An independent implementation: scipy.stats.bootstrap's percentile interval (its own resamples, 9999 of them)
    on the same values; the two differ by Monte Carlo error only (an endpoint from 500 resamples has a standard
    error of about 3% of the interval's width: 4 of them allowed)."""
    from scipy.stats import bootstrap

    torch.manual_seed(6)
    values = torch.distributions.Beta(torch.tensor(2.0), torch.tensor(5.0)).sample((150,)).double()
    ours = Ratio.of_values(values).interval(resample_weights(150))
    theirs = bootstrap((values.numpy(),), np.mean, method="percentile", n_resamples=9999, random_state=0)
    width = theirs.confidence_interval.high - theirs.confidence_interval.low
    assert ours[0] == pytest.approx(theirs.confidence_interval.low, abs=0.12 * width)
    assert ours[1] == pytest.approx(theirs.confidence_interval.high, abs=0.12 * width)
