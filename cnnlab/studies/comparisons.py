"""The statistics of an ablation: intervals inside the metric's range, paired tests, Holm.

- An arm's interval is the 95% Student-t interval of its mean over seeds, intersected with the
  metric's range (accuracies [0, 1], their differences [−1, 1]). The true mean always lies in
  that range, so the intersection covers it exactly as often as the t-interval does, and a
  collapsed seed widens the interval up to the range instead of past it.
- A comparison pairs each seed of an arm with the same seed of its reference (same split, same
  initialisation) and tests the mean difference with a two-sided paired t-test. Why not a
  sign-flip permutation test: with n seeds its smallest p-value is 2/2ⁿ, so 3–5 seeds could
  never be significant, whatever the effect.
- A family of comparisons (an arm against the baseline, per metric; a hypothesis's expectations)
  is adjusted with Holm's step-down method, which controls the family-wise error rate without
  assuming independence; "significant" means the adjusted p < α.
- Equivalence: two one-sided t-tests (TOST) against ±margin, at the same α.
- Differences without spread (t = ±∞) get the exact sign-flip p-value 2/2ⁿ instead of 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
Bounds = tuple[float, float]
UNBOUNDED: Bounds = (-math.inf, math.inf)


def difference_bounds(bounds: Bounds) -> Bounds:
    """The range of a difference of two values in ``bounds``."""
    low, high = bounds
    return low - high, high - low


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its t-interval, clipped to the metric's range (nan below 2 values)."""

    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float], bounds: Bounds = UNBOUNDED, alpha: float = ALPHA
           ) -> Interval:
        n = len(values)
        if n == 0:
            return cls(math.nan, math.nan, math.nan, 0)
        mean = float(np.mean(values))
        if n < 2:
            return cls(mean, math.nan, math.nan, n)
        half = float(stats.t.ppf(1 - alpha / 2, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
        return cls(mean, max(mean - half, bounds[0]), min(mean + half, bounds[1]), n)

    def text(self, signed: bool = False) -> str:
        if self.n == 0:
            return "–"
        mean = f"{self.mean:+.4f}" if signed else f"{self.mean:.4f}"
        if math.isnan(self.low):
            return mean
        fmt = "{:+.4f}" if signed else "{:.4f}"
        return f"{mean} [{fmt.format(self.low)}, {fmt.format(self.high)}]"


@dataclass(frozen=True)
class Comparison:
    """``arm`` minus ``reference`` on ``metric``, paired by seed."""

    arm: str
    reference: str
    metric: str
    delta: Interval
    p: float  # two-sided paired t-test; nan with fewer than two pairs
    p_holm: float  # Holm-adjusted within its family
    alpha: float
    equivalent: bool  # TOST (Holm-adjusted like p): the difference lies within ±margin

    @property
    def significant(self) -> bool:
        return self.p_holm < self.alpha

    @property
    def decided(self) -> bool:
        return self.significant or self.equivalent

    @property
    def sign(self) -> int:
        """+1 / −1 when significantly higher / lower, 0 otherwise."""
        return int(math.copysign(1, self.delta.mean)) if self.significant else 0


def sign_flip_p(n: int) -> float:
    """The smallest two-sided p a sign-flip test of n equal, nonzero differences can give."""
    return min(1.0, 2 / 2**n)


def paired_p(diffs: list[float]) -> float:
    """Two-sided paired t-test p-value of mean difference 0 (nan below two pairs).

    Without spread (every difference equal, as integer epoch counts often are) t is ±∞ and would
    claim p = 0 from three seeds; the exact sign-flip p-value, 2/2ⁿ, is what such data can show.
    """
    if len(diffs) < 2:
        return math.nan
    if np.ptp(diffs) == 0:
        return 1.0 if diffs[0] == 0 else sign_flip_p(len(diffs))
    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def tost_p(arm: list[float], reference: list[float], margin: float) -> float:
    """p of two one-sided paired t-tests that the difference lies within ±margin (nan: none)."""
    if margin <= 0 or len(arm) < 2:
        return math.nan
    diffs = np.subtract(arm, reference)
    if np.ptp(diffs) == 0:  # as in ``paired_p``: the exact sign-flip bound, not t's 0
        return sign_flip_p(len(diffs)) if abs(diffs[0]) < margin else 1.0
    above = stats.ttest_1samp(diffs, -margin, alternative="greater").pvalue
    below = stats.ttest_1samp(diffs, margin, alternative="less").pvalue
    return float(max(above, below))


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values; nan (untestable) entries stay nan and don't count.

    The k-th smallest of m p-values becomes (m − k + 1)·p, made non-decreasing and capped at 1.
    (statsmodels' ``multipletests`` does the same, but importing it costs each worker ~0.8 s;
    a test checks the two agree.)
    """
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Pair:
    """One comparison to make: per-seed values of an arm and of its reference."""

    arm: str
    reference: str
    metric: str
    values: dict[int, float]
    reference_values: dict[int, float]


def compare(pairs: list[Pair], bounds: dict[str, Bounds], alpha: float = ALPHA,
            margin: dict[str, float] | None = None) -> list[Comparison]:
    """One family: paired Δ, t-test p, Holm across the family; TOST where a margin is given,
    Holm-adjusted across the family too."""
    margin = margin or {}
    seeds = [sorted(set(p.values) & set(p.reference_values)) for p in pairs]
    arms = [[p.values[s] for s in common] for p, common in zip(pairs, seeds, strict=True)]
    refs = [[p.reference_values[s] for s in common] for p, common in zip(pairs, seeds, strict=True)]
    diffs = [list(np.subtract(a, r)) for a, r in zip(arms, refs, strict=True)]
    raw = [paired_p(d) for d in diffs]
    same = holm([tost_p(a, r, margin.get(p.metric, 0.0)) for p, a, r in zip(pairs, arms, refs,
                                                                            strict=True)])
    return [Comparison(p.arm, p.reference, p.metric,
                       Interval.of(d, difference_bounds(bounds.get(p.metric, UNBOUNDED)), alpha),
                       p_raw, p_adj, alpha, p_same < alpha)
            for p, d, p_raw, p_adj, p_same in zip(pairs, diffs, raw, holm(raw), same, strict=True)]
