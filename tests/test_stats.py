"""polo_lib/stats.py: the intervals against scipy's, the paired test against scipy's exact one, and the
pairing itself (an unpaired interval would miss a difference every example shows)."""
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from polo_lib import stats

ARRAYS = [np.array([3.1, 4.7, 2.2, 9.0, 5.5, 6.1]),                       # the test split's size
          np.random.default_rng(1).gamma(2.0, 3.0, size=40),
          np.random.default_rng(2).normal(50, 10, size=200)]


@pytest.mark.parametrize("x", ARRAYS, ids=["6", "40-gamma", "200-normal"])
def test_the_bootstrap_interval_is_scipys_within_resampling_noise(x):
    ours = stats.bootstrap_ci(x, resamples=20_000, confidence=0.95, seed=0)
    theirs = scipy_stats.bootstrap((x,), np.mean, n_resamples=20_000, confidence_level=0.95, method="percentile",
                                   random_state=np.random.default_rng(7)).confidence_interval
    noise = 0.03 * x.std(ddof=1)  # two 20k-resample percentile estimates of one interval
    assert ours[0] == pytest.approx(theirs.low, abs=noise) and ours[1] == pytest.approx(theirs.high, abs=noise)
    assert stats.bootstrap_ci(x, seed=3) == stats.bootstrap_ci(x, seed=3)  # seeded: repeatable


@pytest.mark.parametrize("d", [np.array([1.0, 2.0, -0.5, 3.0, 0.2, 1.1]), np.array([0.3, -0.2, 0.1, -0.4, 0.05]),
                               np.ones(6)])
def test_the_paired_permutation_p_value_is_scipys_exact_one(d):
    theirs = scipy_stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf,
                                          alternative="two-sided").pvalue
    assert stats.permutation_p(d) == pytest.approx(theirs, abs=1e-9)
    assert stats.permutation_p(np.ones(6)) == pytest.approx(2 / 64)  # only all-plus and all-minus reach it


def test_a_difference_every_example_shows_is_clear_only_when_paired():
    """Examples differ a lot from each other, tuned beats base on each by about 1: the paired interval
    leaves out 0; bootstrapping base and tuned apart (their intervals) overlaps widely."""
    rng = np.random.default_rng(0)
    base = rng.normal(40, 15, size=8)
    tuned = base + 1.0 + rng.normal(0, 0.2, size=8)
    c = stats.compare(base, tuned, higher_is_better=True)
    assert c.delta_low > 0 and c.verdict == "better" and c.p_value < 0.01
    assert c.tuned_low < c.base_high  # the unpaired view: the two means' intervals overlap
    assert stats.compare(base, base - 1.0, higher_is_better=True).verdict == "worse"
    assert stats.compare(base, base + 1.0, higher_is_better=False).verdict == "worse"  # e.g. repeats: lower is better
    assert stats.compare(base, base + 1.0, higher_is_better=None).verdict == "differs"


def test_noise_is_no_clear_difference_and_the_detectable_difference_says_how_big_it_would_have_to_be():
    rng = np.random.default_rng(5)
    base = rng.normal(10, 3, size=6)
    tuned = base + rng.normal(0, 3, size=6)
    c = stats.compare(base, tuned, higher_is_better=True)
    assert c.delta_low < 0 < c.delta_high and c.verdict == "no clear difference"
    d = tuned - base
    assert c.detectable == pytest.approx((1.959964 + 0.841621) * d.std(ddof=1) / math.sqrt(6), rel=1e-4)
    assert abs(c.delta) < c.detectable


def test_examples_without_a_score_are_left_out_pairwise():
    base = np.array([0.5, np.nan, 0.2, 0.9, 0.4])
    tuned = np.array([0.6, 0.8, np.nan, 1.0, 0.5])
    c = stats.compare(base, tuned, higher_is_better=True)
    assert c.n == 3 and c.base == pytest.approx(np.mean([0.5, 0.9, 0.4])) and c.delta == pytest.approx(0.1)
    one = stats.compare([1.0], [2.0], higher_is_better=True)
    assert one.n == 1 and one.verdict == "too few examples" and math.isnan(one.p_value)
    with pytest.raises(ValueError, match="one base and one tuned score per example"):
        stats.compare([1.0, 2.0], [1.0], higher_is_better=True)


def test_on_six_examples_the_exact_test_guards_the_verdict():
    """The CPU demo's Hangul share: 3 of 6 answers went from English to Korean, 3 were Korean already. The
    percentile bootstrap's interval leaves out 0, the exact sign-flip test gives p = 2/8: no clear
    difference. Six paragraphs all improved: p = 2/64, better."""
    base, tuned = np.array([0, 0, 0, 1, 1, 1.0]), np.ones(6)
    c = stats.compare(base, tuned, higher_is_better=True)
    assert c.delta_low > 0 and c.p_value == pytest.approx(0.25) and c.verdict == "no clear difference"
    rng = np.random.default_rng(3)
    all_better = stats.compare(base, base + rng.uniform(0.5, 1.5, size=6), higher_is_better=True)
    assert all_better.p_value == pytest.approx(2 / 64) and all_better.verdict == "better"
