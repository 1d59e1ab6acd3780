"""What a design could have seen: detectable effects, seeds needed, and Monte-Carlo error rates.

Every figure is the power of the test the comparison actually gets, at the α it was actually
tested at (the α its look spent, over the comparisons active at that look: Holm's first
threshold): the paired test on whole numbers (counts, epochs) simulated through
``comparisons.paired_p`` itself on rounded normal differences, since it switches to exact
sign flips on coarse lattices (``POWER_SIMS`` draws, seeded); on continuous metrics the
t-test's exact power (noncentral t); the two-part test where runs fail, simulated at the
observed failure rates; Boschloo's test exactly, summing over the binomial outcomes.
``simulate`` runs whole studies through the same decision code as the reports
(``sequential.decide``). ``cnnlab plan`` and the calibration tests use it.

Library: statsmodels' ``TTestPower`` gives ``t_power``'s one noncentral-t figure (scipy's,
here, without a dependency for it); every other figure is simulated through ``Sample.p``,
which no power class knows (lattices, failures, Holm at a look's α).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from cnnlab.studies.statistics.comparisons import (
    COARSE_STEPS,
    PAIRED,
    RATES,
    Sample,
    boschloo_p,
    sign_flip_p,
)
from cnnlab.studies.statistics.sequential import Decisions, Look, decide

POWER = 0.8
MOST_SEEDS = 200  # seeds_needed and rates_needed give up beyond this
POWER_SIMS = 4000  # draws behind a simulated power figure (its s.e. ≤ 0.008)
TINY = 1e-4  # binomial outcomes less likely than this are left out of an exact power sum


def t_power(effect: float, sd: float, n: int, alpha: float) -> float:
    """P(two-sided paired t-test at α rejects) with n pairs of true mean Δ ``effect``, sd ``sd``."""
    if n < 2:
        return 0.0
    if sd <= 0:
        return float(effect != 0 and sign_flip_p(n) < alpha)
    crit = stats.t.ppf(1 - alpha / 2, n - 1)
    nc = abs(effect) * math.sqrt(n) / sd
    upper, lower = stats.nct.sf(crit, n - 1, nc), stats.nct.cdf(-crit, n - 1, nc)
    # far in the tail scipy's noncentral t returns nan: 1 above, 0 below
    return float(np.nan_to_num(upper, nan=1.0) + np.nan_to_num(lower, nan=0.0))


@dataclass(frozen=True)
class Setting:
    """What a comparison's power depends on besides Δ and n: the spread of its paired
    differences, whether they are whole numbers (a lattice of step 1, in the units given), and
    the two arms' failure rates (the two-part test where either is above 0)."""

    sd: float
    lattice: bool = False
    fail_arm: float = 0.0
    fail_reference: float = 0.0
    seed: int = 0  # of the simulation, so a stated figure is reproducible

    @property
    def failures(self) -> bool:
        return self.fail_arm > 0 or self.fail_reference > 0

    @property
    def simulated(self) -> bool:
        """The test's power needs a simulation: failures, or a lattice the differences may
        not spread over (beyond twice COARSE_STEPS the paired test is the t-test)."""
        return self.failures or (self.lattice and self.sd < 2 * COARSE_STEPS)


def power(effect: float, n: int, alpha: float, s: Setting, sims: int = POWER_SIMS) -> float:
    """P(the comparison's test at α rejects) with n seeds and true mean difference ``effect``
    (among runs that train, where runs fail)."""
    if n < 2:
        return 0.0
    if not s.simulated:
        return t_power(effect, s.sd, n, alpha)
    rng = np.random.default_rng(s.seed)
    d = abs(effect) + s.sd * rng.standard_normal((sims, n))
    if s.lattice:
        d = np.round(d)
    fa = rng.random((sims, n)) < s.fail_arm
    fr = rng.random((sims, n)) < s.fail_reference
    return float((Sample(d, np.zeros_like(d), fa, fr).p() < alpha).mean())


def detectable_effect(n: int, alpha: float, s: Setting, target: float = POWER) -> float:
    """The smallest |Δ| found with probability ``target`` (inf: not with n seeds)."""
    if n < 2:
        return math.inf
    if s.sd <= 0 and not s.failures:  # no spread: any nonzero Δ, or none at all
        return 0.0 if power(1.0, n, alpha, s) >= target else math.inf
    if power(0.0, n, alpha, s) >= target:
        return 0.0
    high = 1000 * max(s.sd, 1.0 if s.lattice else 1e-12)
    if power(high, n, alpha, s) < target:
        return math.inf
    if not s.simulated:
        return float(optimize.brentq(lambda e: power(e, n, alpha, s) - target, 0, high))
    low = 0.0  # bisection on the simulated power (the same draws at every effect)
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if power(mid, n, alpha, s) < target else (low, mid)
    return high


def seeds_needed(effect: float, alpha: float, s: Setting, target: float = POWER) -> int | None:
    """The fewest seeds with which |Δ| = ``effect`` is found with probability ``target``
    (None: not within MOST_SEEDS). Power grows with the seeds, so a bisection finds it."""
    if power(effect, MOST_SEEDS, alpha, s) < target:
        return None
    low, high = 1, MOST_SEEDS
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if power(effect, mid, alpha, s) < target else (low, mid)
    return high


def rates_power(arm: float, reference: float, n: int, alpha: float) -> float:
    """P(Boschloo's test at α rejects) with n seeds per arm failing at these rates (exact, up
    to outcomes rarer than TINY)."""
    a = stats.binom.pmf(np.arange(n + 1), n, arm)
    r = stats.binom.pmf(np.arange(n + 1), n, reference)
    return float(sum(a[i] * r[j] for i in range(n + 1) for j in range(n + 1)
                     if a[i] * r[j] > TINY and boschloo_p(i, j, n, n) < alpha))


def rates_needed(arm: float, reference: float, alpha: float, target: float = POWER
                 ) -> int | None:
    """The fewest seeds per arm at which failure rates ``arm`` and ``reference`` are told apart
    by Boschloo's test with probability ``target`` (None: equal rates, or not within
    MOST_SEEDS)."""
    if arm == reference:
        return None
    low, high = 1, 2
    while rates_power(arm, reference, high, alpha) < target:
        if high >= MOST_SEEDS:
            return None
        low, high = high, min(2 * high, MOST_SEEDS)
    while high - low > 1:  # bisection: more seeds, more power
        mid = (low + high) // 2
        low, high = (mid, high) if rates_power(arm, reference, mid, alpha) < target else (low, mid)
    return high


@dataclass(frozen=True)
class Counts:
    """Arms' accuracies as the runs store them: correct images of ``total``, per seed."""

    total: int = 360
    accuracy: float = 0.95
    seed_sd: float = 0.015  # seed-to-seed sd of an arm's accuracy, on top of binomial noise
    shared: float = 0.5  # share of that variance common to the arms of one seed (pairing)
    failure: float = 0.0  # P(a run fails); it then scores the chance count
    chance: float = 0.1


@dataclass(frozen=True)
class Simulated:
    """(sims, comparisons, seeds) arrays: each comparison's arm and reference values, paired
    by seed, and which of them failed."""

    arm: np.ndarray
    reference: np.ndarray
    arm_failed: np.ndarray
    reference_failed: np.ndarray
    kinds: tuple[str, ...]

    def samples(self, seeds: int) -> list[Sample]:
        return [Sample(self.arm[:, i, :seeds], self.reference[:, i, :seeds],
                       self.arm_failed[:, i, :seeds], self.reference_failed[:, i, :seeds], kind)
                for i, kind in enumerate(self.kinds)]


def count_samples(c: Counts, effects: list[float], seeds: int, sims: int,
                  rng: np.random.Generator, fails: list[float] | None = None,
                  rates: bool = False) -> Simulated:
    """Arms against one baseline, as correct counts of ``c.total`` images (``rates``: as
    failure indicators, the ``failed`` metric); arm i's true accuracy is the baseline's +
    ``effects[i]``, its failure probability ``fails[i]`` (default: the baseline's)."""
    arms = len(effects) + 1
    shared = rng.normal(0, c.seed_sd * math.sqrt(c.shared), (sims, 1, seeds))
    own = rng.normal(0, c.seed_sd * math.sqrt(1 - c.shared), (sims, arms, seeds))
    shift = np.array([0.0, *effects])[None, :, None]
    acc = np.clip(c.accuracy + shift + shared + own, 0, 1)
    correct = rng.binomial(c.total, acc).astype(float)
    p_fail = np.array([c.failure, *(fails or [c.failure] * len(effects))])[None, :, None]
    failed = rng.random(correct.shape) < p_fail
    correct[failed] = round(c.chance * c.total)
    values = failed.astype(float) if rates else correct
    shape = values[:, 1:].shape
    return Simulated(values[:, 1:], np.broadcast_to(values[:, :1], shape), failed[:, 1:],
                     np.broadcast_to(failed[:, :1], shape), (RATES if rates else PAIRED,) * len(effects))


def lattice_samples(steps: int, nonzero: float, arms: int, seeds: int, sims: int,
                    rng: np.random.Generator, centre: float = 0.0, total: int = 360,
                    fails: float = 0.0, paired_failures: bool = False) -> Simulated:
    """Near-identical arms as the runs store them: each arm's count is the baseline's plus a
    difference on the lattice {−steps…steps} images (0 with probability 1 − ``nonzero``, else
    ± a uniform 1…steps), shifted by ``centre`` images. Runs fail with probability ``fails``
    (both arms of a seed together where ``paired_failures``) and then score the chance count."""
    base = rng.binomial(total, 0.95, (sims, 1, seeds)).astype(float)
    size = rng.integers(1, steps + 1, (sims, arms, seeds)) * rng.choice([-1, 1], (sims, arms,
                                                                               seeds))
    d = np.where(rng.random((sims, arms, seeds)) < nonzero, size, 0) + centre
    values = np.concatenate([base, base + d], 1)
    failed = rng.random(values.shape) < fails
    if paired_failures:
        failed = np.broadcast_to(failed[:, :1], failed.shape).copy()
    values[failed] = round(0.1 * total)
    shape = (sims, arms, seeds)
    return Simulated(values[:, 1:], np.broadcast_to(values[:, :1], shape), failed[:, 1:],
                     np.broadcast_to(failed[:, :1], shape), (PAIRED,) * arms)


def simulate(looks: list[Look], data: Simulated, margins: list[float]) -> Decisions:
    """Every simulated study through the reports' decision code, look by look."""
    return decide(looks, data.samples, margins)


def error_rate(decisions: Decisions, null: np.ndarray) -> tuple[float, float]:
    """Family-wise error (any true-null comparison decided higher or lower) and its MC s.e."""
    wrong = ((decisions.sign != 0) & null[None, :]).any(-1)
    rate = float(wrong.mean())
    return rate, math.sqrt(max(rate * (1 - rate), 1e-12) / len(wrong))
