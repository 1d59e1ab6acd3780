"""What a design could have seen: detectable effects, seeds needed, and Monte-Carlo error rates.

``detectable_effect`` and ``seeds_needed`` use the paired t-test's exact power (noncentral t)
at a per-comparison α: the look's α divided by the family size (Holm's first threshold, so the
figures hold for every comparison of the family). ``simulate`` runs whole studies through the
same decision code as the reports (``sequential.decide``), on differences shaped like the
stored ones: counts of a finite test set (``count_diffs``) or a pilot's spread
(``normal_diffs``). ``cnnlab plan`` and the calibration tests use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from cnnlab.studies.comparisons import PAIRED, RATES, Sample, boschloo_p, sign_flip_p
from cnnlab.studies.sequential import Decisions, Look, decide

POWER = 0.8
MOST_SEEDS = 200  # seeds_needed and rates_needed give up beyond this


def power(effect: float, sd: float, n: int, alpha: float) -> float:
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


def detectable_effect(sd: float, n: int, alpha: float, target: float = POWER) -> float:
    """The smallest |Δ| found with probability ``target`` (inf: not with n seeds)."""
    if n < 2:
        return math.inf
    if sd <= 0:
        return 0.0 if sign_flip_p(n) < alpha else math.inf
    high = 1000 * sd
    if power(high, sd, n, alpha) < target:
        return math.inf
    return float(optimize.brentq(lambda e: power(e, sd, n, alpha) - target, 0, high))


def seeds_needed(effect: float, sd: float, alpha: float, target: float = POWER) -> int | None:
    """The fewest seeds with which |Δ| = ``effect`` is found with probability ``target``."""
    for n in range(2, MOST_SEEDS + 1):
        if power(effect, sd, n, alpha) >= target:
            return n
    return None


def flip_seeds(alpha: float) -> int:
    """The fewest seeds whose sign-flip test can reach p < α at all (2/2ⁿ < α)."""
    return next(n for n in range(1, 64) if sign_flip_p(n) < alpha)


def rates_needed(arm: float, reference: float, alpha: float) -> int | None:
    """The fewest seeds per arm at which failure shares ``arm`` and ``reference`` would give
    Boschloo's p < α (the expected counts, rounded; None: not within power.MOST_SEEDS)."""
    if arm == reference:
        return None
    for n in range(2, MOST_SEEDS + 1):
        if boschloo_p(round(arm * n), round(reference * n), n, n) < alpha:
            return n
    return None


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
