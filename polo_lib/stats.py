"""Uncertainty for comparisons on few examples: bootstrap intervals of a mean, paired differences
with a paired bootstrap interval and a sign-flip permutation p-value, a verdict, and the smallest
difference a paired comparison of this size could detect.

The unit of every statistic is the example: a metric's per-example scores (NaN where the metric has
nothing to score, e.g. glossary coverage of a paragraph without a glossary term: left out, pairwise).
Everything is vectorized numpy with a seeded generator, so a 10,000-resample interval of 6 or 600
examples takes milliseconds and the same inputs give the same interval.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

VERDICTS = ("better", "worse", "no clear difference", "differs", "too few examples")
EXACT_PERMUTATIONS_UP_TO = 16  # paired sign flips enumerated exactly up to 2**16 patterns


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else float("nan")


def _finite(x) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    return x[np.isfinite(x)]


def bootstrap_ci(x, resamples: int = 10_000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `x` (NaNs left out); (nan, nan) below 2 values."""
    x = _finite(x)
    if len(x) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return (float(low), float(high))


def t_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of a few values (NaNs left out), e.g. one mean per seed of a
    replicate group: how much the figure moves between seeds. (nan, nan) below 2 values."""
    from scipy.stats import t

    x = _finite(values)
    if len(x) < 2:
        return (float("nan"), float("nan"))
    sem = x.std(ddof=1) / np.sqrt(len(x))
    if sem == 0:
        return (float(x.mean()), float(x.mean()))
    low, high = t.interval(confidence, len(x) - 1, loc=x.mean(), scale=sem)
    return (float(low), float(high))


def permutation_p(diffs, resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided paired permutation p-value of mean(diffs) = 0: each pair's sign flipped at random
    (exactly, every pattern, up to 16 pairs; else `resamples` random patterns, counted with the
    observed one). NaN below 2 pairs."""
    d = _finite(diffs)
    n = len(d)
    if n < 2:
        return float("nan")
    observed = abs(d.mean())
    if n <= EXACT_PERMUTATIONS_UP_TO:
        patterns = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        stats = np.abs((patterns * d).mean(axis=1))
        return float(np.mean(stats >= observed - 1e-12))
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(resamples, n))
    stats = np.abs((signs * d).mean(axis=1))
    return float((np.sum(stats >= observed - 1e-12) + 1) / (resamples + 1))


def detectable_difference(diffs, confidence: float = 0.95, power: float = 0.8) -> float:
    """The smallest true mean difference a paired comparison of this many examples would find with
    `power` at this confidence, from the observed spread of the differences (normal approximation:
    (z_(1-a/2) + z_power) * sd / sqrt(n)). NaN below 2 pairs."""
    from scipy.stats import norm

    d = _finite(diffs)
    if len(d) < 2:
        return float("nan")
    z = norm.ppf(1 - (1 - confidence) / 2) + norm.ppf(power)
    return float(z * d.std(ddof=1) / np.sqrt(len(d)))


def verdict(low: float, high: float, higher_is_better: bool | None, p_value: float = 0.0,
            alpha: float = 0.05) -> str:
    """From a paired interval of tuned - base and its permutation p-value: "better" / "worse" when the
    interval leaves out 0 (in the metric's direction) and the test agrees (p < alpha), "no clear
    difference" otherwise, "differs" for a metric with no direction. Both, because on a handful of
    examples the percentile bootstrap is too narrow (3 of 6 paragraphs improved and 3 unchanged give an
    interval without 0, while the exact test says p = 0.25)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "too few examples"
    if low <= 0 <= high or not p_value < alpha:
        return "no clear difference"
    if higher_is_better is None:
        return "differs"
    return "better" if (low > 0) == higher_is_better else "worse"


@dataclass(frozen=True)
class Comparison:
    """One metric, base vs tuned (or run A vs run B) on the same examples."""
    n: int            # pairs with both scores
    base: float       # mean per-example score
    base_low: float
    base_high: float
    tuned: float
    tuned_low: float
    tuned_high: float
    delta: float      # mean of tuned - base over the pairs
    delta_low: float  # paired bootstrap interval
    delta_high: float
    p_value: float    # paired permutation test
    detectable: float  # smallest difference this many pairs could detect (80% power)
    verdict: str

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def compare(base, tuned, higher_is_better: bool | None, resamples: int = 10_000, confidence: float = 0.95,
            seed: int = 0) -> Comparison:
    """Base and tuned per-example scores of one metric (aligned by example), compared pairwise."""
    base, tuned = np.asarray(base, dtype=float), np.asarray(tuned, dtype=float)
    if base.shape != tuned.shape:
        raise ValueError(f"paired scores need one base and one tuned score per example: {base.shape} vs {tuned.shape}")
    both = np.isfinite(base) & np.isfinite(tuned)
    b, t = base[both], tuned[both]
    d = t - b
    (low, high), (b_low, b_high), (t_low, t_high) = (bootstrap_ci(x, resamples, confidence, seed) for x in (d, b, t))
    p = permutation_p(d, resamples, seed)
    return Comparison(n=int(both.sum()), base=_mean(b), base_low=b_low, base_high=b_high, tuned=_mean(t),
                      tuned_low=t_low, tuned_high=t_high, delta=_mean(d), delta_low=low, delta_high=high,
                      p_value=p, detectable=detectable_difference(d, confidence),
                      verdict=verdict(low, high, higher_is_better, p, 1 - confidence))


def same_examples(a, b) -> str | None:
    """Why two evaluations' examples differ (ids, or the source text behind one id), or None: a paired
    comparison needs the same examples on both sides. `a`, `b`: tables (predictions.jsonl) with `id`
    and `original` columns."""
    ids_a, ids_b = list(a["id"]), list(b["id"])
    if set(ids_a) != set(ids_b):
        only_a, only_b = sorted(set(ids_a) - set(ids_b)), sorted(set(ids_b) - set(ids_a))
        return (f"{len(ids_a)} vs {len(ids_b)} examples; only in the first: {', '.join(only_a[:5]) or '-'}; "
                f"only in the second: {', '.join(only_b[:5]) or '-'}")
    texts_b = dict(zip(b["id"], b["original"]))
    changed = [i for i, text in zip(a["id"], a["original"]) if texts_b[i] != text]
    return f"the source text of {', '.join(changed[:5])} differs" if changed else None
