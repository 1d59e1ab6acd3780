"""An ablation's results: its trials read back into typed rows, per-arm values, the looks, the
confirmatory family's decisions and the verdict. Reports render this; the rounds of
``--seeds auto`` read it. No plotting, no files.

- Every run of an arm × seed enters its arm's statistics, failed runs included at their
  failure value (intention-to-treat, ``cnnlab.metrics``); a success-only mean sits beside.
- **Confirmatory family**: the hypothesis's expectations (or, without one, every arm against
  the baseline on the primary metric), tested look by look with the α each look spent
  (``sequential``), Holm within a look. Everything else (the arms table's Δ, the mechanism
  metrics, failure rates) is exploratory: unadjusted p-values, no decisions.
- **Failure rates**: each arm's failure count against the baseline's by Boschloo's exact test
  (``comparisons``); an expectation on the metric ``failed`` makes it confirmatory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnlab.metrics import (
    FAILURES,
    MECHANISMS,
    METRICS,
    shown,
)
from cnnlab.studies.ablations.hypothesis import Expectation
from cnnlab.studies.ablations.rows import TrialRow
from cnnlab.studies.ablations.spec import AblationSpec
from cnnlab.studies.ablations.store import AblationStore
from cnnlab.studies.statistics.comparisons import (
    ALPHA,
    PAIRED,
    RATES,
    Interval,
    Sample,
    boschloo_p,
    difference_bounds,
    lattice_step,
)
from cnnlab.studies.statistics.power import Setting, detectable_effect, rates_needed, seeds_needed
from cnnlab.studies.statistics.sequential import Decisions, Look, Plan, decide


@dataclass(frozen=True)
class Comparison:
    """``arm`` minus ``reference`` on ``metric``, paired by seed, intention-to-treat.

    Confirmatory comparisons carry their adjusted p, the α of the look that last tested them,
    the decision and the look that made it; exploratory ones only ``p``."""

    arm: str
    reference: str
    metric: str
    delta: Interval
    p: float
    failed_pairs: int  # seeds where either run failed (the two-part test; never equivalent)
    p_adj: float = math.nan
    alpha: float = math.nan
    sign: int = 0
    equivalent: bool = False
    look: int = -1  # 0-based look that decided it; −1: undecided
    equivalence: Interval | None = None  # the 1 − 2α interval, where a margin applies
    sd: float = math.nan  # of the paired differences (metric units)
    p_tost: float = math.nan  # Holm-adjusted TOST p (equivalence within the spec's margin)

    @property
    def test(self) -> str:
        """The test its p comes from: two-part where a run failed, else the paired test (t, or
        exact sign flips on a coarse lattice)."""
        return "two-part test" if self.failed_pairs else "paired test"

    @property
    def decided(self) -> bool:
        return self.look >= 0

    @property
    def decision(self) -> str:
        return ("higher" if self.sign > 0 else "lower" if self.sign < 0
                else "equivalent" if self.equivalent else "undecided")


@dataclass(frozen=True)
class Power:
    """An undecided comparison's power statement, for the test it got at its seeds and spread,
    at the α it was tested at: its look's α over the comparisons tested there (Holm's first
    threshold)."""

    alpha: float
    test: str  # paired test | two-part test (a run failed) | Boschloo (failure rates)
    detectable: float  # |Δ| found with 80% power at these seeds (inf: none; nan: not sized)
    needed: int | None  # seeds the observed |Δ| would need (None: none observed, or > 200)


@dataclass(frozen=True)
class Check:
    expectation: Expectation
    comparison: Comparison
    outcome: str  # as expected | against | undecided
    power: Power | None  # undecided only

    @property
    def label(self) -> str:
        """What the check tests, as every report names it: the expectation, or (without a
        hypothesis) "metric: arm vs reference"."""
        c = self.comparison
        return (self.expectation.text() if self.expectation.direction
                else f"{shown(c.metric)}: {c.arm} vs {c.reference}")


@dataclass(frozen=True)
class ArmSummary:
    arm: str
    levels: dict[str, str]
    seeds: int
    failures: dict[str, int]  # kind → count
    itt: Interval  # every run, failed ones at their failure value (95%)
    success: Interval  # the runs that did not fail (95%)
    failure_p: float  # Boschloo, against the baseline (nan: the baseline itself, or no failure)
    delta: Comparison | None  # exploratory: ITT Δ vs the baseline, raw p


@dataclass(frozen=True)
class Results:
    spec: AblationSpec
    study: str
    preset: str
    trials: list[TrialRow]
    arms: list[ArmSummary]
    plan: Plan
    looks: list[Look]
    looks_stored: bool  # False: the looks were never recorded (cnnlab ≤ 0.3, or none finished)
    checks: list[Check]  # the confirmatory family
    verdict: str | None  # supported | not supported | undecided (None: no hypothesis)
    mechanisms: dict[str, list[tuple[str, Interval, Comparison | None]]]
    running: list[str]
    failed: list[str]

    @property
    def alpha_spent(self) -> float:
        return sum(look.alpha for look in self.looks)

    @property
    def undecided(self) -> list[Comparison]:
        return [c.comparison for c in self.checks if not c.comparison.decided]

    def arm_records(self) -> list[dict[str, Any]]:
        """One numeric row per arm (the API's and W&B's table): its levels, seeds, failures,
        the metric over every run with its 95% interval, the success-only mean, the
        exploratory Δ with its interval and unadjusted p, the failure-rate p and the
        mechanism means."""
        metric = self.spec.metric
        return [{"arm": a.arm, **self.spec.level_values(a.levels), "seeds": a.seeds,
                 "failed": sum(a.failures.values()), **_numbers(metric, a.itt),
                 "success_mean": _number(a.success.mean),
                 **_numbers("delta", None if a.delta is None else a.delta.delta),
                 "p": None if a.delta is None else _number(a.delta.p),
                 "failure_rate_p": _number(a.failure_p)}
                | {m: next(_number(i.mean) for name, i, _ in cells if name == a.arm)
                   for m, cells in self.mechanisms.items()} for a in self.arms]

    def check_records(self) -> list[dict[str, Any]]:
        """One row per confirmatory comparison: Δ with its interval, p, Holm p, the α it was
        tested at, the look that decided it, the outcome, the smallest Δ it could detect."""
        return [{"metric": c.comparison.metric, "arm": c.comparison.arm,
                 "reference": c.comparison.reference, "expected": c.expectation.direction or None,
                 "outcome": c.outcome, **_numbers("delta", c.comparison.delta),
                 "p": _number(c.comparison.p), "p_holm": _number(c.comparison.p_adj),
                 "alpha": c.comparison.alpha,
                 "look": c.comparison.look + 1 if c.comparison.decided else None,
                 "detectable": _within(c.comparison.metric, c.power)} for c in self.checks]


def _within(metric: str, power: Power | None) -> float | None:
    """The smallest |Δ| a check could detect, where one inside the metric's range could be
    found (an accuracy's 1.632 is no effect at all: None, as the report says it)."""
    if power is None or math.isinf(power.detectable):
        return None
    low, high = METRICS[metric].bounds
    return None if power.detectable > high - low else power.detectable


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def _numbers(prefix: str, interval: Interval | None) -> dict[str, float | None]:
    """An interval as three numbers: ``prefix``, ``prefix_low``, ``prefix_high`` (None where
    there is none)."""
    if interval is None:
        return {prefix: None, f"{prefix}_low": None, f"{prefix}_high": None}
    return {prefix: _number(interval.mean), f"{prefix}_low": _number(interval.low),
            f"{prefix}_high": _number(interval.high)}


def _sample(rows: list[TrialRow], arm: str, reference: str, metric: str, seeds: int | None
            ) -> tuple[Sample, float]:
    """The paired ITT values over the common seeds below ``seeds`` (all: None), as counts of
    images where the metric is counted and every run has the same total, and the scale back
    to metric units (1/total for counts)."""
    mine = {r.seed: r for r in rows if r.arm == arm}
    theirs = {r.seed: r for r in rows if r.arm == reference}
    common = sorted(s for s in set(mine) & set(theirs) if seeds is None or s < seeds)
    pairs = [(mine[s], theirs[s]) for s in common
             if mine[s].value(metric) is not None and theirs[s].value(metric) is not None]
    exact = [(a.exact(metric), b.exact(metric)) for a, b in pairs]
    totals = {e[1] for pair in exact for e in pair if e is not None}
    scale = 1.0
    if pairs and len(totals) == 1 and all(a and b for a, b in exact):
        scale = 1 / totals.pop()
        values = [(a[0], b[0]) for a, b in exact]  # type: ignore[index]
    else:
        values = [(a.value(metric), b.value(metric)) for a, b in pairs]
    failed = np.array([(a.failure is not None, b.failure is not None) for a, b in pairs],
                      bool).reshape(-1, 2)
    v = np.array(values, float).reshape(-1, 2)
    kind = RATES if METRICS[metric].rates else PAIRED
    return Sample(v[None, :, 0], v[None, :, 1], failed[None, :, 0], failed[None, :, 1],
                  kind), scale


def _comparison(rows: list[TrialRow], arm: str, reference: str, metric: str,
                alpha: float = ALPHA) -> Comparison:
    """An exploratory comparison: ITT Δ with its (1 − α) interval and the raw p."""
    sample, scale = _sample(rows, arm, reference, metric, None)
    diffs = sample.diffs[0]
    bounds = difference_bounds(METRICS[metric].bounds)
    sd = float(np.std(diffs, ddof=1)) * scale if len(diffs) > 1 else math.nan
    return Comparison(arm, reference, metric, Interval.of(diffs, bounds, alpha, scale),
                      float(sample.p()[0]), int(sample.failed.sum()), sd=sd)


def family(spec: AblationSpec) -> list[Expectation]:
    """The confirmatory family: the hypothesis's expectations, or every arm against the
    baseline on the primary metric, in the direction it came out (two-sided tests)."""
    if spec.hypothesis is not None:
        return list(spec.hypothesis.expect)
    return [Expectation(arm.name, spec.baseline, spec.metric, "") for arm in spec.arms
            if arm.name != spec.baseline]


def _outcome(e: Expectation, c: Comparison) -> str:
    if not e.direction:
        return c.decision
    if e.sign == 0:
        return "as expected" if c.equivalent and not c.sign else "against" if c.sign else (
            "undecided")
    if c.sign == e.sign:
        return "as expected"
    return "against" if c.sign == -e.sign or (c.equivalent and not c.sign) else "undecided"


def _confirm(spec: AblationSpec, rows: list[TrialRow], looks: list[Look]) -> list[Check]:
    """The confirmatory family decided look by look (``sequential.decide``)."""
    expect = family(spec)
    if not expect:  # a single arm: nothing to compare
        return []
    scales = [_sample(rows, e.arm, e.than, e.metric, None)[1] for e in expect]
    margins = [spec.margin / scale if e.metric == spec.metric else 0.0
               for e, scale in zip(expect, scales, strict=True)]

    def samples_at(seeds: int) -> list[Sample]:
        return [_sample(rows, e.arm, e.than, e.metric, seeds)[0] for e in expect]

    decisions: Decisions = decide(looks, samples_at, margins)
    checks = []
    for i, (e, scale) in enumerate(zip(expect, scales, strict=True)):
        k = int(decisions.look[0, i])
        seeds = looks[k].seeds if k >= 0 else looks[-1].seeds
        alpha = float(decisions.alpha[0, i])
        shown = alpha if alpha > 0 else ALPHA  # a look beyond the plan: a descriptive 95%
        sample = _sample(rows, e.arm, e.than, e.metric, seeds)[0]
        diffs, failed = sample.diffs[0], sample.failed[0]
        bounds = difference_bounds(METRICS[e.metric].bounds)
        equivalence = (Interval.of(diffs, bounds, 2 * shown, scale)
                       if margins[i] > 0 and not failed.any() else None)
        sd = float(np.std(diffs, ddof=1)) * scale if len(diffs) > 1 else math.nan
        c = Comparison(e.arm, e.than, e.metric, Interval.of(diffs, bounds, shown, scale),
                       float(decisions.p[0, i]), int(failed.sum()), float(decisions.p_adj[0, i]),
                       alpha, int(decisions.sign[0, i]), bool(decisions.equivalent[0, i]), k,
                       equivalence, sd, float(decisions.tost_adj[0, i]))
        each = (alpha if alpha > 0 else ALPHA) / max(1, int(decisions.family[0, i]))
        power = None if c.decided or len(diffs) < 2 else _power(sample, c, each, scale)
        checks.append(Check(e, c, _outcome(e, c), power))
    return checks


def _power(sample: Sample, c: Comparison, each: float, scale: float) -> Power:
    """What ``c`` could have found at its seeds, and the seeds its observed Δ would need, by
    the test it got: Boschloo for failure rates, the two-part test where a run failed (Δ among
    runs that trained, at the observed failure rates), else the paired test."""
    n = sample.arm.shape[-1]
    if sample.kind == RATES:
        shares = float(sample.arm.mean()), float(sample.reference.mean())
        always = 1.0 if boschloo_p(n, 0, n, n) < each else math.inf
        return Power(each, "Boschloo", always, rates_needed(*shares, each))
    diffs, ok = sample.diffs[0], ~sample.failed[0]
    lattice = not np.isnan(lattice_step(diffs))
    if sample.failed.any():
        trained = diffs[ok]
        sd = float(np.std(trained, ddof=1)) if len(trained) > 1 else c.sd / scale
        setting = Setting(sd if math.isfinite(sd) else 0.0, lattice,
                          float(sample.arm_failed.mean()), float(sample.reference_failed.mean()))
        effect, test = abs(float(trained.mean())) if len(trained) else 0.0, "two-part test"
    else:
        setting = Setting(c.sd / scale, lattice)
        effect, test = abs(c.delta.mean) / scale, "paired test"
    found = detectable_effect(n, each, setting) * scale
    return Power(each, test, found, seeds_needed(effect, each, setting) if effect else None)


def _shown(rows: list[TrialRow], spec: AblationSpec) -> list[str]:
    """The spec's ``metrics:``, or the mechanism metrics that differ between arms."""
    if spec.metrics:
        return [m for m in spec.metrics if m != spec.metric]
    return [metric for metric in MECHANISMS
            if len({round(v, 12) for r in rows if (v := r.value(metric)) is not None}) > 1]


def _arm(spec: AblationSpec, rows: list[TrialRow], name: str, levels: dict[str, str]
         ) -> ArmSummary:
    mine = [r for r in rows if r.arm == name]
    base = [r for r in rows if r.arm == spec.baseline]
    bounds = METRICS[spec.metric].bounds
    failures = {kind: sum(r.failure == kind for r in mine) for kind in FAILURES}
    itt = [v for r in mine if (v := r.value(spec.metric)) is not None]
    ok = [v for r in mine if r.failure is None and (v := r.value(spec.metric)) is not None]
    failed = (sum(failures.values()), sum(r.failure is not None for r in base))
    baseline = name == spec.baseline
    rate_p = (math.nan if baseline or not any(failed) or not base
              else boschloo_p(*failed, len(mine), len(base)))
    return ArmSummary(
        name, levels, len(mine), failures, Interval.of(itt, bounds), Interval.of(ok, bounds),
        rate_p, None if baseline else _comparison(rows, name, spec.baseline, spec.metric))


def collect(store: AblationStore) -> Results:
    """The study's trials read back and decided at the looks the study stored (read-only: a
    report mid-round, or of a study that never stored a look, decides nothing new; the look
    is stored, and its α spent once, when ``cnnlab ablate`` finishes the round)."""
    spec = store.spec
    rows, running, failed = store.rows()
    order = [arm.name for arm in spec.arms]
    rows.sort(key=lambda r: (order.index(r.arm), r.seed))
    plan = store.plan(spec)
    looks, stored = store.looks(), True
    if not looks:  # decide nothing with an α no look recorded; show the seeds descriptively
        seeds = [sum(r.arm == arm for r in rows) for arm in order]
        looks, stored = [Look(max(1, min(seeds, default=1)), 0.0)], False
    present = [arm for arm in spec.arms if any(r.arm == arm.name for r in rows)]
    arms = [_arm(spec, rows, arm.name, arm.levels) for arm in present]
    mechanisms = {metric: [(arm.name, Interval.of([v for r in rows if r.arm == arm.name and
                                                   (v := r.value(metric)) is not None],
                                                  METRICS[metric].bounds),
                            None if arm.name == spec.baseline else
                            _comparison(rows, arm.name, spec.baseline, metric))
                           for arm in present] for metric in _shown(rows, spec)}
    checks = _confirm(spec, rows, looks) if rows else []
    verdict = None
    if spec.hypothesis is not None:
        outcomes = {c.outcome for c in checks}
        verdict = ("not supported" if "against" in outcomes else "supported"
                   if outcomes == {"as expected"} else "undecided")
    return Results(spec, store.name, store.preset, rows, arms, plan,
                   looks, stored, checks, verdict, mechanisms, running, failed)


def next_round(report: Results, seeds: dict[str, int]) -> dict[str, int]:
    """``--seeds auto``: more seeds for both arms of every undecided confirmatory comparison,
    up to the spec's maximum (and the plan's: beyond it a look spends nothing)."""
    spec, more = report.spec, dict[str, int]()
    for c in report.undecided:
        count = min(spec.max_seeds, report.plan.most,
                    max(seeds[c.arm], seeds[c.reference]) + spec.seed_step)
        for arm in (c.arm, c.reference):
            if count > seeds[arm]:
                more[arm] = max(more.get(arm, 0), count)
    return more
