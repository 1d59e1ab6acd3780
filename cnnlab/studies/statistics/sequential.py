"""Looks that spend α: a study's seed plan as a group-sequential design.

A study tests its confirmatory family more than once when seeds are added after looking (a
spec's ``seeds: {min, max, step}``, ``--seeds auto``, or a later ``--seeds N``). Each look
spends part of α by the Lan–DeMets α-spending approach (Lan & DeMets 1983, Biometrika 70:659)
with the Pocock-type function α·ln(1 + (e − 1)·t) (Kim & DeMets 1987), over the information
fraction t = seeds / the plan's maximum. Pocock-type because a study's first look has only 2–4
degrees of freedom: O'Brien–Fleming-type spending gives it ~0.0003 (t > 38 with 3 seeds), which
no ablation reaches. Look k tests at the increment α(t_k) − α(t_(k−1)); the family-wise error
over all looks is at most the sum of the increments, α, whatever the correlation between looks
(a union bound: exact group-sequential boundaries would need the joint law of t statistics with
2–9 degrees of freedom, and gain little here — the calibration tests show the margin).

Every look is stored in the study (``ablations.store``) when it is taken, with its seeds and the α it
spent, so a later command that adds seeds takes a new look with what is left, and a rerun
cannot pretend it had one look. A report decides only at stored looks: one made mid-round, or
of a study that never stored a look, decides nothing and spends nothing (``results.collect``).
Looks beyond the plan's maximum spend nothing (the report says the added seeds are
descriptive). A comparison decided at a look keeps that decision and
leaves the family of later looks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cnnlab.studies.statistics.comparisons import ALPHA, Sample, decide_family


def pocock(t: float, alpha: float = ALPHA) -> float:
    """Cumulative α spent at information fraction t (Pocock-type, Kim & DeMets 1987)."""
    return alpha * math.log(1 + (math.e - 1) * min(1.0, max(0.0, t)))


@dataclass(frozen=True)
class Plan:
    """Seeds per arm at the first look, the most any look may have, and the step between looks."""

    first: int
    most: int
    step: int
    alpha: float = ALPHA

    def spent(self, seeds: int) -> float:
        """Cumulative α the plan allows once ``seeds`` seeds are in."""
        return self.alpha if seeds >= self.most else pocock(seeds / self.most, self.alpha)

    def to_dict(self) -> dict[str, float]:
        return {"first": self.first, "most": self.most, "step": self.step, "alpha": self.alpha}

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> Plan:
        return cls(int(d["first"]), int(d["most"]), int(d["step"]), float(d["alpha"]))


@dataclass(frozen=True)
class Look:
    seeds: int
    alpha: float  # spent at this look (0 beyond the plan)


def take_look(plan: Plan, looks: list[Look], seeds: int) -> list[Look]:
    """``looks`` with a look at ``seeds`` added (unchanged if the last look had these seeds)."""
    if looks and looks[-1].seeds >= seeds:
        return looks
    spent = sum(look.alpha for look in looks)
    return [*looks, Look(seeds, max(0.0, plan.spent(seeds) - spent))]


def planned_looks(plan: Plan) -> list[Look]:
    """The plan's looks if every one is taken: first, first + step, …, most."""
    looks: list[Look] = []
    for seeds in [*range(plan.first, plan.most, plan.step), plan.most]:
        looks = take_look(plan, looks, seeds)
    return looks


@dataclass(frozen=True)
class Decisions:
    """Per (simulation, comparison): the decided direction, equivalence, the look that decided
    (−1: none), and the last test of each comparison (its own look's, or the last look's)."""

    sign: np.ndarray
    equivalent: np.ndarray
    look: np.ndarray
    p: np.ndarray
    p_adj: np.ndarray
    tost_adj: np.ndarray
    alpha: np.ndarray  # the α of the look each comparison was last tested at
    family: np.ndarray  # how many comparisons were tested with it there (Holm's m)

    @property
    def decided(self) -> np.ndarray:
        return self.look >= 0


def decide(looks: list[Look], samples_at: Callable[[int], list[Sample]], margins: list[float]
           ) -> Decisions:
    """Test the family at each look with that look's α; a decided comparison stays decided.

    ``samples_at(seeds)`` gives each comparison's values over its first ``seeds`` seeds."""
    first = samples_at(looks[0].seeds)
    shape = (first[0].arm.shape[0], len(first))
    sign = np.zeros(shape, int)
    equivalent = np.zeros(shape, bool)
    look = np.full(shape, -1)
    p, p_adj, tost_adj, alpha = (np.full(shape, math.nan) for _ in range(4))
    family = np.zeros(shape, int)
    for k, step in enumerate(looks):
        active = look < 0
        if not active.any():
            break
        samples = first if k == 0 else samples_at(step.seeds)
        last = decide_family(samples, step.alpha, margins, active)
        new = active & ((last.sign != 0) | last.equivalent)
        sign[new], equivalent[new], look[new] = last.sign[new], last.equivalent[new], k
        for mine, theirs in ((p, last.p), (p_adj, last.p_adj), (tost_adj, last.tost_adj)):
            mine[active] = theirs[active]
        alpha[active] = step.alpha
        family[active] = np.broadcast_to(active.sum(-1, keepdims=True), shape)[active]
    return Decisions(sign, equivalent, look, p, p_adj, tost_adj, alpha, family)
