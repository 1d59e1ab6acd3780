"""``cnnlab plan``: size a spec's seed plan from a pilot (an earlier study of the spec).

Each confirmatory comparison is modelled from the pilot's runs: the reference's mean and the
arm's difference over runs that did not fail, the spread of the paired differences, each arm's
observed failure rate, failed runs at their failure value and counted metrics rounded to whole
images. Whole studies are then
simulated under a seed plan and decided by the reports' own code (``sequential.decide``): the
chance that each expectation comes out as expected, that the claim is supported, and the
family-wise error when every arm equals its reference (the same model with the arm's
difference set to 0 and its failure rate to the reference's).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cnnlab.errors import CnnlabError, count
from cnnlab.metrics import METRICS, count_key
from cnnlab.studies.ablations.hypothesis import Expectation
from cnnlab.studies.ablations.results import family
from cnnlab.studies.ablations.rows import TrialRow
from cnnlab.studies.ablations.spec import AblationSpec
from cnnlab.studies.statistics.comparisons import PAIRED, RATES
from cnnlab.studies.statistics.power import POWER, Setting, Simulated, seeds_needed, simulate
from cnnlab.studies.statistics.sequential import Plan, planned_looks


@dataclass(frozen=True)
class Pilot:
    """The runs a plan is sized from — a pilot study of the spec (``cnnlab ablate SPEC
    --pilot``: seeds from 1000) or its stored results.csv — and the spec being planned, whose
    hypothesis and margin the plan is for."""

    name: str
    spec: AblationSpec
    trials: list[TrialRow]


@dataclass(frozen=True)
class Model:
    """One comparison as the pilot shows it (metric units; counts where ``quantum`` < 1)."""

    reference: float  # mean of the reference's runs that did not fail
    delta: float  # arm − reference over pairs where neither failed (else every pair)
    sd: float  # of those paired differences (at least one quantum)
    fail_arm: float
    fail_reference: float
    failure_value: float
    quantum: float  # 1/total for counted metrics, 1 for epochs, 0 for continuous ones
    rates: bool
    pilot_seeds: int


def _rate(rows: list[TrialRow]) -> float:
    return sum(r.failure is not None for r in rows) / max(1, len(rows))


def model(pilot: Pilot, e: Expectation) -> Model:
    """The pilot's view of expectation ``e``."""
    arm = {r.seed: r for r in pilot.trials if r.arm == e.arm}
    ref = {r.seed: r for r in pilot.trials if r.arm == e.than}
    seeds = sorted(set(arm) & set(ref))
    ok = [s for s in seeds if arm[s].failure is None and ref[s].failure is None]
    use = ok if len(ok) >= 2 else seeds
    diffs = [arm[s].value(e.metric) - ref[s].value(e.metric) for s in use  # type: ignore[operator]
             if arm[s].value(e.metric) is not None and ref[s].value(e.metric) is not None]
    refs = [v for r in ref.values() if r.failure is None and (v := r.value(e.metric)) is not None]
    split = METRICS[e.metric].counted
    totals = {r.metrics.get(count_key(split, "total")) for r in pilot.trials} if split else set()
    total = totals.pop() if len(totals) == 1 else None
    quantum = 1 / total if total else METRICS[e.metric].step
    failed = [r for r in pilot.trials if r.failure is not None]
    fail_value = next((v for r in failed if (v := r.value(e.metric)) is not None), math.nan)
    sd = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else math.nan
    return Model(float(np.mean(refs)) if refs else math.nan,
                 float(np.mean(diffs)) if diffs else 0.0,
                 max(sd if math.isfinite(sd) else 0.0, quantum, 1e-9),
                 _rate(list(arm.values())), _rate(list(ref.values())), fail_value, quantum,
                 METRICS[e.metric].rates, len(seeds))


def _draw(models: list[Model], seeds: int, sims: int, rng: np.random.Generator, null: bool
          ) -> Simulated:
    shape = (sims, len(models), seeds)
    arm, ref = np.zeros(shape), np.zeros(shape)
    arm_failed, ref_failed = np.zeros(shape, bool), np.zeros(shape, bool)
    for i, m in enumerate(models):
        fail_ref = rng.random((sims, seeds)) < m.fail_reference
        fail_arm = rng.random((sims, seeds)) < (m.fail_reference if null else m.fail_arm)
        if m.rates:
            arm[:, i], ref[:, i] = fail_arm, fail_ref
        else:
            base = m.reference if math.isfinite(m.reference) else 0.0
            r = base + rng.normal(0, m.sd / math.sqrt(2), (sims, seeds))
            a = base + (0.0 if null else m.delta) + rng.normal(0, m.sd / math.sqrt(2),
                                                                 (sims, seeds))
            fail_value = m.failure_value if math.isfinite(m.failure_value) else base
            r, a = np.where(fail_ref, fail_value, r), np.where(fail_arm, fail_value, a)
            if m.quantum:
                r, a = np.round(r / m.quantum), np.round(a / m.quantum)
            arm[:, i], ref[:, i] = a, r
        arm_failed[:, i], ref_failed[:, i] = fail_arm, fail_ref
    kinds = tuple(RATES if m.rates else PAIRED for m in models)
    return Simulated(arm, ref, arm_failed, ref_failed, kinds)


@dataclass(frozen=True)
class Design:
    """A seed plan's simulated outcome under the pilot's models."""

    plan: Plan
    expected: list[float]  # per expectation: P(decided in its direction)
    supported: float  # P(every expectation as expected)
    decided: float  # P(supported or not supported: one against, or equivalent)
    fwer: float  # P(any comparison decided higher/lower when every arm equals its reference)
    fwer_se: float
    mean_seeds: float  # seeds per arm at the look that ends the study (on average)


def simulate_plan(pilot: Pilot, plan: Plan, sims: int = 2000, seed: int = 0) -> Design:
    """``plan`` run ``sims`` times on the pilot's models, decided by the reports' code."""
    expect = family(pilot.spec)
    models = [model(pilot, e) for e in expect]
    looks = planned_looks(plan)
    margins = [pilot.spec.margin / (m.quantum or 1.0) if e.metric == pilot.spec.metric
               else 0.0 for e, m in zip(expect, models, strict=True)]
    rng = np.random.default_rng(seed)
    alt = simulate(looks, _draw(models, plan.most, sims, rng, null=False), margins)
    signs = np.array([e.sign for e in expect])[None, :]
    direction = np.array([bool(e.direction) for e in expect])[None, :]
    same = alt.equivalent & (alt.sign == 0)
    hit = np.where(~direction, alt.decided, np.where(signs != 0, alt.sign == signs, same))
    against = direction & np.where(signs != 0, (alt.sign == -signs) | same, alt.sign != 0)
    null = simulate(looks, _draw(models, plan.most, sims, rng, null=True), margins)
    wrong = (null.sign != 0).any(-1)
    last = np.where(alt.decided.all(-1), alt.look.max(-1), len(looks) - 1)
    fwer = float(wrong.mean())
    decided = hit.all(-1) | against.any(-1)
    return Design(plan, list(hit.mean(0)), float(hit.all(-1).mean()), float(decided.mean()),
                  fwer,
                  math.sqrt(max(fwer * (1 - fwer), 1e-12) / sims),
                  float(np.mean([looks[k].seeds for k in last])))


def seeds_for(pilot: Pilot, effect: float | None) -> list[tuple[Expectation, Model, int | None]]:
    """Per expectation: seeds a single look needs for 80% power at |Δ| = ``effect`` (default:
    the pilot's) with the pilot's spread, at α over the family size."""
    expect = family(pilot.spec)
    out = []
    for e in expect:
        m = model(pilot, e)
        size = abs(effect if effect is not None else m.delta)
        unit = m.quantum or 1.0
        setting = Setting(m.sd / unit, bool(m.quantum), m.fail_arm, m.fail_reference)
        needed = (None if m.rates or not size else
                  seeds_needed(size / unit, 0.05 / len(expect), setting, POWER))
        out.append((e, m, needed))
    return out


MAX_SIMS = 100_000


def plan_lines(pilot: Pilot, plans: list[Plan], effect: float | None, sims: int, seed: int
               ) -> Iterator[str]:
    """``cnnlab plan``'s text: the seeds each confirmatory comparison needs in one look, then
    each seed plan's simulated chances, error rate and cost."""
    count("--sims", sims, 1, MAX_SIMS, "simulated studies per plan; 10⁸ needed 60 GiB")
    count("--seed", seed, 0, 2**32 - 1, "the simulation's seed")
    if effect is not None and not (math.isfinite(effect) and effect > 0):
        raise CnnlabError(f"--effect: got {effect}; allowed: a positive finite number (the |Δ| "
                          "to size for, in the metric's units)")
    expect = family(pilot.spec)
    if not pilot.trials or not expect:
        raise CnnlabError(f"pilot {pilot.name!r} has no finished trials to plan from; allowed: "
                          "a pilot run of the spec (cnnlab ablate SPEC --pilot)")
    arms = {r.arm for r in pilot.trials}
    missing = sorted({a for e in expect for a in (e.arm, e.than)} - arms)
    if missing:
        raise CnnlabError(f"pilot {pilot.name!r} has no runs of arm {missing[0]!r}; allowed: a "
                          f"pilot of spec {pilot.spec.name} (cnnlab ablate SPEC --pilot)")
    seeds = sorted({r.seed for r in pilot.trials})
    yield (f"{pilot.name}: pilot of {len(seeds)} seeds an arm; seeds for 80% power in one look at "
           f"α 0.05 / {len(expect)} (the family)")
    for i, (e, m, needed) in enumerate(seeds_for(pilot, effect)):
        size = f"|Δ| {effect:g}" if effect else "the pilot's Δ"
        need = ("failure rates: see the simulation" if m.rates
                else f"equivalence within ±{pilot.spec.margin:g}: see the simulation"
                if e.direction == "equivalent" else f"{needed or 'more than 200'} seeds for {size}")
        yield (f"  {i + 1}. {e.text() if e.direction else f'{e.arm} vs {e.than}'}: Δ "
               f"{m.delta:+.4g}, sd {m.sd:.3g}, failure rate {m.fail_arm:.2f} vs "
               f"{m.fail_reference:.2f}; {need}")
    yield (f"seed plans, {sims} simulated studies each (seed {seed}), decided by the report's "
           "code:")
    for plan in plans:
        d = simulate_plan(pilot, plan, sims, seed)
        yield (f"  {plan.first}:{plan.most}:{plan.step}: P(as expected) "
               + " ".join(f"{i + 1}:{x:.2f}" for i, x in enumerate(d.expected))
               + f"; P(supported) {d.supported:.2f}; P(decided) {d.decided:.2f}; FWER under the "
               f"null {d.fwer:.3f} ± {d.fwer_se:.3f}; {d.mean_seeds:.1f} seeds per arm on average")
