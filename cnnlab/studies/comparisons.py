"""The decision rules of an ablation, vectorised so a Monte-Carlo check runs the same code.

- **Paired differences.** A comparison pairs each seed of an arm with the same seed of its
  reference (same split, same initialisation). Accuracies are differenced as counts of test
  images, so equal counts are an exact tie.
- **Failures.** A failed run enters at its failure value (intention-to-treat), so its
  difference is an outlier of hundreds of images and the differences are bimodal: the t-test
  is then wrong (a null Monte-Carlo with 11 arms and 30% failures gave a family-wise error of
  0.11). A comparison in which any run failed is tested with the exact sign-flip permutation
  test of its differences (valid for any distribution symmetric under the null; its smallest p
  is 2/2ⁿ, so failures need more seeds to decide), and is never called equivalent.
- **Failure rates.** The pseudo-metric ``failed`` (1 for a failed run) is tested with
  Boschloo's exact unconditional test of the two arms' failure counts: exact like Fisher's
  and uniformly more powerful (3 of 3 against 0 of 3: p 0.031 against Fisher's 0.1). Not
  paired (McNemar): its smallest p with n discordant seeds is 2/2ⁿ. Seeds pair the runs, but a
  failure is the arm's doing, so the two arms' failures are treated as independent counts.
- **Test.** Two-sided paired t-test of mean difference 0. Differences without spread get the
  exact sign-flip p-value 2/2ⁿ (1 when they are all 0) instead of t's 0: "without spread" means
  a range within ``TIE_RTOL`` of the largest difference's size (at least 1), which makes integer
  counts exact and absorbs float32 rounding of continuous metrics (~6e-8 relative).
  Why not a sign-flip test throughout: with n seeds its smallest p is 2/2ⁿ, so 3–5 seeds could
  never decide anything; the calibration tests check that the t-test keeps its error rate on
  counts of a finite test set.
- **Family.** Holm's step-down adjustment across a family at the look's α; a comparison
  decided at an earlier look leaves the family (``sequential.decide``).
- **Equivalence.** Two one-sided t-tests (TOST) against ±margin, Holm-adjusted across the
  family like the difference tests; shown with its 1 − 2α interval.
- **Intervals.** Student-t, intersected with the metric's range (the true mean lies in it, so
  the intersection covers as often as the t-interval). Without spread no interval is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats

ALPHA = 0.05
TIE_RTOL = 1e-6
Bounds = tuple[float, float]
UNBOUNDED: Bounds = (-math.inf, math.inf)


def difference_bounds(bounds: Bounds) -> Bounds:
    """The range of a difference of two values in ``bounds``."""
    low, high = bounds
    return low - high, high - low


def tied(values: np.ndarray) -> np.ndarray:
    """Along the last axis: no spread beyond the tie tolerance (see the module notes)."""
    values = np.asarray(values, float)
    scale = np.maximum(1.0, np.abs(values).max(-1))
    return np.ptp(values, -1) <= TIE_RTOL * scale


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its t-interval, clipped to the metric's range (``scale``: the
    values are counts, and the interval is given in metric units, values × scale).

    ``low``/``high`` are nan below two values and when the values have no spread (no interval
    can be estimated from them; the exact p-value still applies)."""

    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float] | np.ndarray, bounds: Bounds = UNBOUNDED,
           alpha: float = ALPHA, scale: float = 1.0) -> Interval:
        v = np.asarray(values, float)
        n = len(v)
        if n == 0:
            return cls(math.nan, math.nan, math.nan, 0)
        mean = float(v.mean()) * scale
        if n < 2 or bool(tied(v)):
            return cls(mean, math.nan, math.nan, n)
        half = float(stats.t.ppf(1 - alpha / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)) * scale
        return cls(mean, max(mean - half, bounds[0]), min(mean + half, bounds[1]), n)

    @property
    def spread(self) -> bool:
        return not math.isnan(self.low)

    def text(self, signed: bool = False) -> str:
        if self.n == 0:
            return "–"
        fmt = "{:+.4f}" if signed else "{:.4f}"
        mean = fmt.format(self.mean)
        if self.spread:
            return f"{mean} [{fmt.format(self.low)}, {fmt.format(self.high)}]"
        return mean if self.n < 2 else f"{mean} (every seed equal)"


def sign_flip_p(n: int) -> float:
    """The two-sided p of a sign-flip test of n equal, nonzero differences: 2/2ⁿ."""
    return min(1.0, 2 / 2**n)


def paired_p(diffs: np.ndarray) -> np.ndarray:
    """Two-sided p of mean difference 0 along the last axis (n seeds); nan below two seeds."""
    d = np.asarray(diffs, float)
    n = d.shape[-1]
    if n < 2:
        return np.full(d.shape[:-1], math.nan)
    mean = d.mean(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / (d.std(-1, ddof=1) / math.sqrt(n))
        p = 2 * stats.t.sf(np.abs(t), n - 1)
    zero = np.abs(mean) <= TIE_RTOL * np.maximum(1.0, np.abs(d).max(-1))
    return np.where(tied(d), np.where(zero, 1.0, sign_flip_p(n)), p)


EXACT_SEEDS = 12  # up to 2¹² sign patterns are enumerated; beyond, PERMUTATIONS random ones
PERMUTATIONS = 4096


def _signs(n: int) -> np.ndarray:
    """(n, patterns) of ±1: every pattern up to EXACT_SEEDS seeds, else a fixed random set."""
    if n <= EXACT_SEEDS:
        grid = (np.arange(2**n)[None, :] >> np.arange(n)[:, None]) & 1
    else:  # a Monte-Carlo permutation test, seeded so a report is reproducible
        grid = np.random.default_rng(n).integers(0, 2, (n, PERMUTATIONS - 1))
        grid = np.concatenate([np.zeros((n, 1), int), grid], 1)  # with the observed one
    return 1 - 2 * grid


def sign_flip_test(diffs: np.ndarray) -> np.ndarray:
    """Two-sided p of the sign-flip permutation test of mean 0 along the last axis."""
    d = np.asarray(diffs, float)
    n = d.shape[-1]
    if n < 1:
        return np.full(d.shape[:-1], math.nan)
    means = np.abs(d @ _signs(n))  # (..., patterns); the first pattern is the observed one
    tol = TIE_RTOL * np.maximum(1.0, np.abs(d).max(-1, keepdims=True)) * n
    return (means >= means[..., :1] - tol).mean(-1)


def itt_p(diffs: np.ndarray, failed: np.ndarray) -> np.ndarray:
    """The two-sided p of one comparison's paired differences: the sign-flip test where a pair
    had a failed run (``failed``, same shape), the paired t-test (with the tie rule) elsewhere."""
    d = np.asarray(diffs, float)
    if d.shape[-1] == 0:
        return np.full(d.shape[:-1], math.nan)
    return np.where(np.asarray(failed, bool).any(-1), sign_flip_test(d), paired_p(d))


@lru_cache(maxsize=4096)
def boschloo_p(failed: int, reference_failed: int, runs: int, reference_runs: int) -> float:
    """Two-sided p of Boschloo's exact test that two arms fail equally often."""
    if not (failed or reference_failed) or failed + reference_failed == runs + reference_runs:
        return 1.0  # no failure, or nothing but failures: no evidence either way
    table = [[failed, reference_failed], [runs - failed, reference_runs - reference_failed]]
    return float(stats.boschloo_exact(table, alternative="two-sided").pvalue)


def rates_p(arm: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Boschloo's p for 0/1 failure indicators along the last axis (any leading shape)."""
    a, r = np.asarray(arm, float), np.asarray(reference, float)
    if a.shape[-1] == 0:
        return np.full(a.shape[:-1], math.nan)
    n, m = a.shape[-1], r.shape[-1]
    fa, fr = a.sum(-1).astype(int), r.sum(-1).astype(int)
    return np.vectorize(lambda x, y: boschloo_p(int(x), int(y), n, m), otypes=[float])(fa, fr)


def tost_p(diffs: np.ndarray, margin: float) -> np.ndarray:
    """p of two one-sided t-tests that the mean difference lies within ±margin (nan: no margin
    or below two seeds); without spread, the exact sign-flip bound."""
    d = np.asarray(diffs, float)
    n = d.shape[-1]
    if margin <= 0 or n < 2:
        return np.full(d.shape[:-1], math.nan)
    mean = d.mean(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = d.std(-1, ddof=1) / math.sqrt(n)
        above = stats.t.sf((mean + margin) / se, n - 1)
        below = stats.t.cdf((mean - margin) / se, n - 1)
    exact = np.where(np.abs(mean) < margin, sign_flip_p(n), 1.0)
    return np.where(tied(d), exact, np.maximum(above, below))


def holm(p_values: np.ndarray | list[float]) -> np.ndarray:
    """Holm-adjusted p-values along the last axis; nan entries are not in the family.

    The k-th smallest of m p-values becomes (m − k + 1)·p, made non-decreasing and capped at 1
    (as statsmodels' ``multipletests``, which a test checks; importing it costs a worker ~0.8 s).
    """
    p = np.asarray(p_values, float)
    tested = ~np.isnan(p)
    m = tested.sum(-1, keepdims=True)
    order = np.argsort(np.where(tested, p, np.inf), axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, -1)
    rank = np.arange(p.shape[-1])
    adjusted = np.fmax.accumulate(np.minimum(1.0, (m - rank) * ranked), axis=-1)
    out = np.empty_like(adjusted)
    np.put_along_axis(out, order, adjusted, -1)
    return np.where(tested, out, math.nan)


@dataclass(frozen=True)
class FamilyTest:
    """One family tested at one α: arrays of shape (simulations, comparisons)."""

    p: np.ndarray
    p_adj: np.ndarray
    tost_adj: np.ndarray
    sign: np.ndarray  # +1 / −1 where the adjusted p < α, else 0
    equivalent: np.ndarray  # adjusted TOST p < α


PAIRED, RATES = "paired", "rates"  # how a comparison is tested (``rates``: metric ``failed``)


@dataclass(frozen=True)
class Sample:
    """One comparison's values, shaped (simulations, seeds) and paired by seed: the arm's, the
    reference's, which pairs had a failed run, and how it is tested."""

    arm: np.ndarray
    reference: np.ndarray
    failed: np.ndarray
    kind: str = PAIRED

    @property
    def diffs(self) -> np.ndarray:
        return self.arm - self.reference

    def p(self) -> np.ndarray:
        if self.kind == RATES:
            return rates_p(self.arm, self.reference)
        return itt_p(self.diffs, self.failed)


def decide_family(samples: list[Sample], alpha: float, margins: list[float],
                active: np.ndarray | None = None) -> FamilyTest:
    """Each comparison tested (``Sample.p``); Holm over the active comparisons."""
    diffs = [s.diffs for s in samples]
    failed = [s.failed for s in samples]
    any_failed = [np.asarray(f, bool).any(-1) for f in failed]
    p = np.stack([s.p() for s in samples], -1)
    same = np.stack([np.where(f, 1.0, tost_p(d, m)) if d.shape[-1] >= 2 else
                     np.full(d.shape[:-1], math.nan)
                     for d, f, m in zip(diffs, any_failed, margins, strict=True)], -1)
    mean = np.stack([np.asarray(d, float).mean(-1) if d.shape[-1] else
                     np.full(d.shape[:-1], math.nan) for d in diffs], -1)
    if active is not None:
        p, same = np.where(active, p, math.nan), np.where(active, same, math.nan)
    p_adj, tost_adj = holm(p), holm(same)
    significant = p_adj < alpha
    sign = np.where(significant, np.sign(mean), 0).astype(int)
    return FamilyTest(p, p_adj, tost_adj, sign, tost_adj < alpha)
