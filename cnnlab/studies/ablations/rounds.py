"""An ablation's seed rounds: the seeds each arm has planned, queuing what is missing, the look
a finished round takes, and the next round of ``--seeds auto`` (read from the results model).
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from cnnlab.studies.ablations.results import Results, looks_of, plan_of
from cnnlab.studies.ablations.rows import ARM, CONFIGS, FINISHED, KEY, OVERRIDES, SEED, arm_seed
from cnnlab.studies.ablations.spec import AblationSpec
from cnnlab.studies.statistics.sequential import LOOKS, take_look


def trial_key(arm: str, seed: int) -> str:
    return f"{arm} | seed={seed}"


def take_next_look(study: optuna.Study, spec: AblationSpec) -> None:
    """Store a look at the seeds every arm now has, with the α it spends (``sequential``):
    once per round, before its report decides anything; a rerun with no new seeds adds none."""
    seeds = max(planned(study, spec).values())
    looks = looks_of(study)
    new = take_look(plan_of(study, spec), looks, seeds)
    if new != looks:
        study.set_user_attr(LOOKS, [{"seeds": look.seeds, "alpha": look.alpha} for look in new])


PLANNED = "planned_seeds"  # study attribute: seeds per arm of the latest round, stored before its trials


def planned(study: optuna.Study, spec: AblationSpec) -> dict[str, int]:
    """Seeds per arm: the spec's, or more where earlier rounds planned or queued more (any
    state). A round's plan is stored in one record before its trials are queued, so a kill
    half-way through queueing resumes the whole round, not a part of it."""
    stored = study.user_attrs.get(PLANNED, {})
    seeds = {arm.name: max(spec.seeds, stored.get(arm.name, 0)) for arm in spec.arms}
    for t in study.get_trials(deepcopy=False):
        if KEY in t.user_attrs:
            arm, seed = arm_seed(t.user_attrs, t.params)
            if arm in seeds:
                seeds[arm] = max(seeds[arm], seed + 1)
    return seeds


def reconcile(study: optuna.Study, spec: AblationSpec, quick: bool,
              more: dict[str, int] | None = None) -> int:
    """Queue every planned arm × seed (``more``: raise an arm's count) that is not finished,
    queued or running; returns how many."""
    taken = {t.user_attrs.get(KEY) for t in study.get_trials(deepcopy=False)
             if t.state in (*FINISHED, TrialState.WAITING, TrialState.RUNNING)}
    seeds = planned(study, spec)
    for name, count in (more or {}).items():
        seeds[name] = max(seeds[name], count)
    if more:
        study.set_user_attr(PLANNED, seeds)
    queued = 0
    for arm in spec.arms:
        for seed in range(seeds[arm.name]):
            key = trial_key(arm.name, seed)
            if key not in taken:
                study.enqueue_trial(dict(arm.levels), user_attrs={
                    KEY: key, ARM: arm.name, SEED: seed, CONFIGS: list(spec.configs),
                    OVERRIDES: spec.trial_overrides(arm, seed, quick)})
                queued += 1
    return queued


def next_round(report: Results, seeds: dict[str, int]) -> dict[str, int]:
    """More seeds for both arms of every undecided confirmatory comparison, up to the spec's
    maximum (and the plan's: beyond it a look spends nothing)."""
    spec, more = report.spec, dict[str, int]()
    for c in report.undecided:
        count = min(spec.max_seeds, report.plan.most,
                    max(seeds[c.arm], seeds[c.reference]) + spec.seed_step)
        for arm in (c.arm, c.reference):
            if count > seeds[arm]:
                more[arm] = max(more.get(arm, 0), count)
    return more
