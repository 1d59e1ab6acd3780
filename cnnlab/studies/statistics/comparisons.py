"""The decision rules of an ablation, vectorised so a Monte-Carlo check runs the same code.

- **Paired differences.** A comparison pairs each seed of an arm with the same seed of its
  reference (same split, same initialisation). Accuracies are differenced as counts of test
  images, so equal counts are an exact tie.
- **Failures.** A failed run enters at its failure value (intention-to-treat; ``cnnlab.metrics``
  gives every metric one that no successful run is worse than). A comparison in which a run
  failed gets Lachenbruch's two-part test: the two arms' failure counts (Boschloo) combined
  with the paired differences of the seeds where both trained (``two_part_p``). A sign-flip
  test of the ITT differences alone could never decide below 6 seeds (its smallest p is
  2/2ⁿ); the failure counts of 5 of 5 against 0 of 5 give p 0.002. Never called equivalent.
- **Failure rates.** The pseudo-metric ``failed`` (1 for a failed run) is tested with
  Boschloo's exact unconditional test of the two arms' failure counts: exact like Fisher's
  and uniformly more powerful (3 of 3 against 0 of 3: p 0.031 against Fisher's 0.1). Not
  paired (McNemar): its smallest p with n discordant seeds is 2/2ⁿ. Seeds pair the runs, but a
  failure is the arm's doing, so the two arms' failures are treated as independent counts.
- **Paired test, valid on any lattice.** Counts of test images (and epochs) are whole numbers.
  Where the paired differences spread over fewer than ``COARSE_STEPS`` steps of their lattice
  (sd / gcd of the differences), the t-test's p collapses — ``[-1]*9 + [0]`` gets 8.5e-6,
  less than ``[-1]*10`` — and its error reached 7× nominal at 5 seeds. There the exact
  Fisher–Pitman sign-flip test of the differences decides (Good 2005, *Permutation, Parametric
  and Bootstrap Tests*, §3.2: exact for any distribution symmetric under the null), elsewhere
  the paired t-test, which keeps 3–5-seed looks able to decide. The threshold 1.5 is where an
  exact enumeration over symmetric lattice nulls (one to five steps, zero mass 0–0.5, 3–5
  seeds) kept the size ≤ α at α 0.05, 0.0095 and 0.0045 (the worst: 0.90·α; 1.0 reached
  2.5·α); the calibration tests repeat it. Continuous metrics (losses, norms) get the t-test.
- **Family.** Holm's step-down adjustment across a family at the look's α; a comparison
  decided at an earlier look leaves the family (``sequential.decide``).
- **Equivalence.** Two one-sided tests (TOST) against ±margin — t-tests, or exact one-sided
  sign-flip tests of d ± margin where the differences are coarse — Holm-adjusted across the
  family like the difference tests; shown with its 1 − 2α interval.
- **Intervals.** Student-t, intersected with the metric's range (the true mean lies in it, so
  the intersection covers as often as the t-interval). Without spread no interval is given.

Library: the t interval is scipy's (``ttest_1samp(...).confidence_interval``). The sign flips
are enumerated here, vectorised over simulated studies: ``scipy.stats.permutation_test`` gives
the same p-values (a test checks) but took 1.44 s where this takes 0.009 s on 2,000 ten-seed
studies, and the calibration tests run millions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import special, stats

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
        ci = stats.ttest_1samp(v, 0.0).confidence_interval(1 - alpha)
        return cls(mean, max(float(ci.low) * scale, bounds[0]),
                   min(float(ci.high) * scale, bounds[1]), n)

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


EXACT_SEEDS = 12  # up to 2¹² sign patterns are enumerated; beyond, PERMUTATIONS random ones
PERMUTATIONS = 4096
BOSCHLOO_RUNS = 30
COARSE_STEPS = 1.5  # differences whose sd is below this many lattice steps get the exact test


def _signs(n: int) -> np.ndarray:
    """(n, patterns) of ±1: every pattern up to EXACT_SEEDS seeds, else a fixed random set."""
    if n <= EXACT_SEEDS:
        grid = (np.arange(2**n)[None, :] >> np.arange(n)[:, None]) & 1
    else:  # a Monte-Carlo permutation test, seeded so a report is reproducible
        grid = np.random.default_rng(n).integers(0, 2, (n, PERMUTATIONS - 1))
        grid = np.concatenate([np.zeros((n, 1), int), grid], 1)  # with the observed one
    return 1 - 2 * grid


def _flip_sums(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every sign pattern's sum along the last axis (the first is the observed one), and the
    tolerance below which two sums are equal."""
    sums = x @ _signs(x.shape[-1])
    tol = TIE_RTOL * np.maximum(1.0, np.abs(x).max(-1, keepdims=True)) * x.shape[-1]
    return sums, tol


def sign_flip_test(diffs: np.ndarray) -> np.ndarray:
    """Two-sided p of the sign-flip permutation test of mean 0 along the last axis (exact up
    to EXACT_SEEDS seeds: Fisher–Pitman, valid for any distribution symmetric under the null,
    lattices included)."""
    d = np.asarray(diffs, float)
    if d.shape[-1] < 1:
        return np.full(d.shape[:-1], math.nan)
    sums, tol = _flip_sums(d)
    means = np.abs(sums)
    return (means >= means[..., :1] - tol).mean(-1)


def flip_above(x: np.ndarray) -> np.ndarray:
    """One-sided sign-flip p that ``x`` is centred above 0 (its sum this large by chance)."""
    sums, tol = _flip_sums(np.asarray(x, float))
    return (sums >= sums[..., :1] - tol).mean(-1)


def lattice_step(diffs: np.ndarray) -> np.ndarray:
    """Along the last axis: the step of the lattice the differences sit on (the gcd of whole
    numbers: counts of images, epochs), 0 where all are 0, nan where they are not whole."""
    d = np.asarray(diffs, float)
    whole = (np.abs(d - np.round(d)) <= TIE_RTOL).all(-1) & (np.abs(d) < 2**53).all(-1)
    ints = np.where(whole[..., None], np.abs(np.round(d)), 0).astype(np.int64)
    return np.where(whole, np.gcd.reduce(ints, axis=-1), math.nan)


def coarse(diffs: np.ndarray) -> np.ndarray:
    """Along the last axis: differences on a lattice with less than COARSE_STEPS steps of
    spread, or without spread at all. Here the t-test's p collapses (``[-1]*9 + [0]``: 8.5e-6),
    so the exact sign-flip test decides (module notes)."""
    d = np.asarray(diffs, float)
    step = lattice_step(d)
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = d.std(-1, ddof=1) / step if d.shape[-1] > 1 else np.zeros(d.shape[:-1])
    return tied(d) | (~np.isnan(step) & ~(spread >= COARSE_STEPS))


def t_p(diffs: np.ndarray) -> np.ndarray:
    """Two-sided p of the paired t-test of mean 0 along the last axis (nan below two seeds)."""
    d = np.asarray(diffs, float)
    n = d.shape[-1]
    if n < 2:
        return np.full(d.shape[:-1], math.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = d.mean(-1) / (d.std(-1, ddof=1) / math.sqrt(n))
        return 2 * stats.t.sf(np.abs(t), n - 1)


def paired_p(diffs: np.ndarray) -> np.ndarray:
    """Two-sided p of mean difference 0 along the last axis (n seeds; nan below two): the
    exact sign-flip test where the differences are coarse, the t-test elsewhere."""
    d = np.asarray(diffs, float)
    if d.shape[-1] < 2:
        return np.full(d.shape[:-1], math.nan)
    return _where_coarse(d, sign_flip_test, t_p(d))


def _where_coarse(d: np.ndarray, exact: Callable[[np.ndarray], np.ndarray], other: np.ndarray
                  ) -> np.ndarray:
    """``exact(d)`` where ``d`` is coarse, else ``other``; the permutations are computed only
    for the coarse rows (a simulation has thousands of others)."""
    out = np.array(other, float)
    rows = coarse(d)
    if rows.any():
        out[rows] = exact(d[rows])
    return out


@lru_cache(maxsize=65536)
def boschloo_p(failed: int, reference_failed: int, runs: int, reference_runs: int) -> float:
    """Two-sided p of Boschloo's exact test that two arms fail equally often (beyond
    BOSCHLOO_RUNS runs an arm, Fisher's exact test: also exact, a little conservative, and
    hundreds of times faster where power sums and simulations need thousands of tables)."""
    if not (failed or reference_failed) or failed + reference_failed == runs + reference_runs:
        return 1.0  # no failure, or nothing but failures: no evidence either way
    table = [[failed, reference_failed], [runs - failed, reference_runs - reference_failed]]
    if max(runs, reference_runs) > BOSCHLOO_RUNS:
        return float(stats.fisher_exact(table).pvalue)
    return float(stats.boschloo_exact(table, alternative="two-sided").pvalue)


def rates_p(arm: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Boschloo's p for 0/1 failure indicators along the last axis (any leading shape)."""
    a, r = np.asarray(arm, float), np.asarray(reference, float)
    if a.shape[-1] == 0:
        return np.full(a.shape[:-1], math.nan)
    n, m = a.shape[-1], r.shape[-1]
    tables = a.sum(-1).astype(int) * (m + 1) + r.sum(-1).astype(int)  # one code per 2×2 table
    codes, inverse = np.unique(tables, return_inverse=True)  # a simulation repeats few tables
    p = np.array([boschloo_p(int(c) // (m + 1), int(c) % (m + 1), n, m) for c in codes])
    return p[inverse].reshape(tables.shape)


def two_part_p(diffs: np.ndarray, arm_failed: np.ndarray, reference_failed: np.ndarray
               ) -> np.ndarray:
    """Lachenbruch's two-part test (Stat Methods Med Res 2002, 11:297) along the last axis: the
    failure counts (Boschloo) and the paired differences of the seeds where neither run failed
    (``paired_p``, at least two), combined as χ² = Σ χ²₁-quantiles of the parts' p on one
    degree of freedom per part present. The parts are independent under the null (the
    second is tested given which runs failed), so the combination is exact in the limit and
    the calibration tests check it at 3–10 seeds."""
    d = np.asarray(diffs, float)
    fa, fr = np.asarray(arm_failed, bool), np.asarray(reference_failed, bool)
    rates = rates_p(fa, fr)
    ok = ~(fa | fr)
    # the successful pairs first, then a test per count of them
    order = np.argsort(~ok, axis=-1, kind="stable")
    packed = np.take_along_axis(d, order, -1)
    count = ok.sum(-1)
    success = np.full(d.shape[:-1], math.nan)
    for k in np.unique(count):
        if k >= 2:
            rows = count == k
            success[rows] = paired_p(packed[rows][..., :k])
    parts = np.where(np.isnan(success), 1, 2)
    # χ² quantiles and tail by scipy.special's ufuncs (stats.chi2's generic isf was most of a
    # simulation's time)
    chi2 = special.chdtri(1, rates) + np.where(np.isnan(success), 0.0,
                                              special.chdtri(1, np.nan_to_num(success, nan=1.0)))
    return special.chdtrc(parts, chi2)


def tost_p(diffs: np.ndarray, margin: float) -> np.ndarray:
    """p of two one-sided tests that the mean difference lies within ±margin (nan: no margin
    or below two seeds): exact one-sided sign-flip tests where the differences are coarse,
    one-sided t-tests elsewhere."""
    d = np.asarray(diffs, float)
    n = d.shape[-1]
    if margin <= 0 or n < 2:
        return np.full(d.shape[:-1], math.nan)
    mean = d.mean(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = d.std(-1, ddof=1) / math.sqrt(n)
        above = stats.t.sf((mean + margin) / se, n - 1)
        below = stats.t.cdf((mean - margin) / se, n - 1)
    return _where_coarse(d, lambda c: np.maximum(flip_above(c + margin), flip_above(margin - c)),
                         np.maximum(above, below))


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
    reference's, which of each failed, and how it is tested."""

    arm: np.ndarray
    reference: np.ndarray
    arm_failed: np.ndarray
    reference_failed: np.ndarray
    kind: str = PAIRED

    @property
    def diffs(self) -> np.ndarray:
        return self.arm - self.reference

    @property
    def failed(self) -> np.ndarray:
        """Pairs with a failed run."""
        return np.asarray(self.arm_failed, bool) | np.asarray(self.reference_failed, bool)

    def p(self) -> np.ndarray:
        """The comparison's two-sided p: Boschloo for failure rates, the two-part test where a
        run failed, else the paired test (exact on coarse lattices)."""
        if self.kind == RATES:
            return rates_p(self.arm, self.reference)
        d = self.diffs
        out = np.full(d.shape[:-1], math.nan)
        if d.shape[-1] == 0:
            return out
        failed = self.failed.any(-1)  # each test only where it applies
        out[~failed] = paired_p(d[~failed])
        if failed.any():
            out[failed] = two_part_p(d[failed], np.asarray(self.arm_failed, bool)[failed],
                                     np.asarray(self.reference_failed, bool)[failed])
        return out


def decide_family(samples: list[Sample], alpha: float, margins: list[float],
                active: np.ndarray | None = None) -> FamilyTest:
    """Each comparison tested (``Sample.p``); Holm over the active comparisons."""
    diffs = [s.diffs for s in samples]
    any_failed = [s.failed.any(-1) for s in samples]
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
