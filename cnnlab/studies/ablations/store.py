"""An ablation's saved state: the only code that names, writes and reads an ablation study's
attributes (its spec and resolved digest, the seed plan, the looks taken, each round's seeds)
and its trials' (arm, seed, what they run, the metrics they measured), and that reads the
studies older cnnlab wrote (0.1 kept arm and seed as parameters, its failure as ``error`` and
its curve as ``history``; ≤ 0.3 had no seed plan, looks or digest).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from cnnlab.config import to_yaml
from cnnlab.errors import CnnlabError, did_you_mean
from cnnlab.metrics import FAILURE, RESULT_KEYS, VAL_ACC
from cnnlab.studies.ablations.rows import TrialRow, with_worst
from cnnlab.studies.ablations.spec import REPORT_KEYS, SEED_KEYS, AblationSpec, Arm
from cnnlab.studies.engine.storage import JOURNAL, default_url, open_storage
from cnnlab.studies.engine.store import (
    CONFIG_CHANGED,
    DATA_CHANGED,
    FINISHED,
    KEY,
    PENDING,
    PRESET,
    Pin,
    Store,
)
from cnnlab.studies.specs import study_name as preset_name
from cnnlab.studies.statistics.sequential import Look, Plan, take_look

# Trial attributes.
ARM, SEED = "arm", "seed"                    # an ablation trial's arm and seed
CONFIGS, OVERRIDES = "configs", "overrides"  # what it runs
LEGACY_HISTORY = "history"  # cnnlab 0.1: the per-epoch metrics
LEGACY_DIVERGED = "diverged"  # how cnnlab ≤ 0.3 began a diverged (pruned) trial's reason
# Study attributes.
RESOLVED = "resolved_sha256"  # in the spec attribute: every arm's resolved config, digested
PLANNED = "planned_seeds"     # seeds per arm of the latest round, stored before its trials
LOOKS = "looks_taken"         # [{"seeds": n, "alpha": spent}, ...] in the order taken
SEED_PLAN = "seed_plan"       # the α-spending plan fixed when the study was created


def study_name(spec: AblationSpec, quick: bool) -> str:
    return preset_name(spec.name, quick)


def trial_key(arm: str, seed: int) -> str:
    return f"{arm} | seed={seed}"


def resolved_digest(spec: AblationSpec, quick: bool) -> str:
    """The digest of every arm's config as its trials run it: what the spec names plus the
    content of its ``configs:`` files and of the defaults, so an edited base file (or a relative
    path that finds another file) is a different study."""
    text = "".join(to_yaml(spec.config(arm, 0, quick)) for arm in spec.arms)
    return hashlib.sha256(text.encode()).hexdigest()


def arm_digest(spec: AblationSpec, arm: Arm, quick: bool) -> str:
    """The digest of one arm's resolved config (seed 0), its ``configs:`` files read now."""
    return hashlib.sha256(to_yaml(spec.config(arm, 0, quick)).encode()).hexdigest()


class AblationStore(Store):
    """One ablation study: its spec, seed rounds and looks, and its trials as rows."""

    QUEUED = (KEY, ARM, SEED, CONFIGS, OVERRIDES)

    @classmethod
    def open(cls, spec: AblationSpec, quick: bool, storage: optuna.storages.BaseStorage,
             data: dict[str, str]) -> AblationStore:
        """Create or load the study; its spec attribute guards against mixing different specs
        or settings (seeds may be added, and what only the report reads may change, between
        runs; a study of cnnlab ≤ 0.3 has no resolved digest yet and gets one). The seed plan
        is fixed before the first trial. ``data``: each arm's data fingerprint (``pins``)."""
        attrs = {**spec.to_dict(), PRESET: "quick" if quick else "full",
                 RESOLVED: resolved_digest(spec, quick)}
        study = cls.create(storage, study_name(spec, quick), spec.direction, attrs,
                           mutable=SEED_KEYS + REPORT_KEYS, added=(RESOLVED,),
                           grow_only=("seeds",), pins=cls.pins(spec, quick, data))
        if SEED_PLAN not in study.user_attrs and not study.get_trials(deepcopy=False):
            study.set_user_attr(SEED_PLAN, spec.plan.to_dict())
        return cls(study)

    @staticmethod
    def pins(spec: AblationSpec, quick: bool, data: dict[str, str]) -> list[Pin]:
        """What the arms in ``data`` run: the resolved config and the data's content (``data``:
        arm → ``ImageData.fingerprint``), pinned when the study is made, checked before each
        trial."""
        return [pin for arm in spec.arms if arm.name in data for pin in (
            (f"arm {arm.name!r}'s resolved config", arm_digest(spec, arm, quick), CONFIG_CHANGED),
            (f"arm {arm.name!r}'s data", data[arm.name], DATA_CHANGED))]

    @classmethod
    def attach(cls, url: str, name: str) -> AblationStore:
        """A worker's own connection to a study the command opened."""
        return cls(cls.load(open_storage(url), name))

    @classmethod
    def stored(cls, name: str, out: Path, storage: str | None) -> AblationStore:
        """An ablation's study, opened read-only from ``storage`` (default ``out``'s journal)."""
        url = storage or default_url(out)
        if "://" not in url and not Path(url).is_file():
            studies = [p.parent.name for p in out.parent.glob(f"*/{JOURNAL}")]  # beside out
            quick = preset_name(out.name, True)
            hint = did_you_mean(quick if quick in studies else out.name, studies)
            raise CnnlabError(f"--storage {url}: no study storage there{hint}; allowed: the "
                              "--out or --storage of an earlier cnnlab ablate")
        store = cls(cls.load(open_storage(url, readonly=True), name))
        if "factors" not in store.spec_attrs:
            raise CnnlabError(f"study {name!r} is not an ablation (a cnnlab tune search?); "
                              "allowed: an ablation's name; a search's report is its "
                              "--out/search.md, rewritten by rerunning cnnlab tune")
        return store

    @property
    def spec(self) -> AblationSpec:
        return AblationSpec.from_dict(self.spec_attrs)

    @property
    def preset(self) -> str:
        return str(self.spec_attrs[PRESET])

    # -- the α-spending plan and its looks -----------------------------------------------------
    def plan(self, spec: AblationSpec | None = None) -> Plan:
        """The plan stored when the study was created (cnnlab ≤ 0.3: one look, or a look per
        planned round of its seeds, from the stored spec)."""
        stored = self.study.user_attrs.get(SEED_PLAN)
        if stored:
            return Plan.from_dict(stored)
        spec = spec or self.spec
        return Plan(spec.seeds, max(spec.seeds, spec.max_seeds), spec.seed_step)

    def looks(self) -> list[Look]:
        return [Look(int(look["seeds"]), float(look["alpha"]))
                for look in self.study.user_attrs.get(LOOKS, [])]

    def take_next_look(self, spec: AblationSpec) -> None:
        """Store a look at the seeds every arm now has, with the α it spends (``sequential``):
        once per round, before its report decides anything; a rerun with no new seeds adds
        none."""
        looks = self.looks()
        new = take_look(self.plan(spec), looks, max(self.planned(spec).values()))
        if new != looks:
            self.study.set_user_attr(LOOKS, [{"seeds": k.seeds, "alpha": k.alpha} for k in new])

    # -- seed rounds -----------------------------------------------------------------------------
    def planned(self, spec: AblationSpec) -> dict[str, int]:
        """Seeds per arm: the spec's, or more where earlier rounds planned or queued more (any
        state). A round's plan is stored in one record before its trials are queued, so a kill
        half-way through queueing resumes the whole round, not a part of it."""
        stored = self.study.user_attrs.get(PLANNED, {})
        seeds = {arm.name: max(spec.seeds, stored.get(arm.name, 0)) for arm in spec.arms}
        for t in self.trials():
            if self.key(t) is not None:
                arm, seed = self.arm_seed(t)
                if arm in seeds:
                    seeds[arm] = max(seeds[arm], seed + 1)
        return seeds

    def reconcile(self, spec: AblationSpec, quick: bool, more: dict[str, int] | None = None
                  ) -> int:
        """Queue every planned arm × seed (``more``: raise an arm's count) that is not
        finished, queued or running; returns how many."""
        taken = self.taken()
        seeds = self.planned(spec)
        for name, count in (more or {}).items():
            seeds[name] = max(seeds[name], count)
        if more:
            self.study.set_user_attr(PLANNED, seeds)
        queued = 0
        for arm in spec.arms:
            for seed in range(seeds[arm.name]):  # the index; the run's seed adds first_seed
                key = trial_key(arm.name, seed)
                if key not in taken:
                    self.enqueue(key, dict(arm.levels), **{
                        ARM: arm.name, SEED: seed, CONFIGS: list(spec.configs),
                        OVERRIDES: spec.trial_overrides(arm, seed, quick)})
                    queued += 1
        return queued

    # -- a trial's work and outcome ------------------------------------------------------------
    @staticmethod
    def arm_seed(trial: FrozenTrial) -> tuple[str, int]:
        """A trial's arm and seed (cnnlab 0.1 kept them as parameters)."""
        if ARM in trial.user_attrs:
            return str(trial.user_attrs[ARM]), int(trial.user_attrs[SEED])
        return str(trial.params["arm"]), int(trial.params["seed"])

    def work(self, trial: optuna.Trial, spec: AblationSpec
             ) -> tuple[Arm, int, list[str], list[str]]:
        """What a queued trial runs: its arm, seed, config files and overrides. Each factor is
        a categorical parameter (what optuna-dashboard ranks and plots)."""
        if ARM in trial.user_attrs:
            name, seed = trial.user_attrs[ARM], trial.user_attrs[SEED]
            for factor, levels in spec.factors.items():
                trial.suggest_categorical(factor, list(levels))
        else:  # queued by cnnlab 0.1, whose parameters were the arm and the seed
            name = trial.suggest_categorical("arm", [a.name for a in spec.arms])
            seed = trial.suggest_int("seed", 0, 2**31 - 1)
        arm = next(a for a in spec.arms if a.name == name)
        return arm, int(seed), list(trial.user_attrs[CONFIGS]), list(trial.user_attrs[OVERRIDES])

    @staticmethod
    def record(trial: optuna.Trial, metrics: dict[str, Any], history: list[dict[str, float]]
               ) -> TrialRow:
        """Store a run's metrics (and its failure, if any) and its validation curve as the
        trial's intermediate values; returns its row."""
        kept = {k: metrics[k] for k in (*RESULT_KEYS, FAILURE) if k in metrics}
        for name, value in kept.items():
            trial.set_user_attr(name, value)
        for epoch, row in enumerate(history):
            if VAL_ACC in row:
                trial.report(row[VAL_ACC], epoch)
        arm, seed = AblationStore.arm_seed(trial)  # type: ignore[arg-type]
        failure = kept.get(FAILURE)
        return TrialRow(arm, seed, None if failure is None else str(failure), kept, [])

    def outcomes(self, trials: list[FrozenTrial]) -> dict[str, dict[int, tuple[float | None, bool]]]:
        """Per arm and seed, each finished trial's value and whether its run failed."""
        done: dict[str, dict[int, tuple[float | None, bool]]] = {}
        for t in trials:
            if t.state in FINISHED and self.key(t) is not None:
                name, seed = self.arm_seed(t)
                complete = t.state == TrialState.COMPLETE
                done.setdefault(name, {})[seed] = (
                    t.value if complete else None,
                    not complete or t.user_attrs.get(FAILURE) is not None)
        return done

    def rows(self) -> tuple[list[TrialRow], list[str], list[str]]:
        """The finished trials (one per arm × seed), the keys still running or queued, and one
        line per arm × seed that did not run to a result (an error, not a failed training; or
        no attempt that ran), which the report leaves out."""
        rows: dict[str, TrialRow] = {}
        problems: list[tuple[str, str]] = []
        for t in self.trials():
            key = self.key(t)
            if key is None:
                continue
            reason = self.reason(t) or ""
            legacy = t.state == TrialState.PRUNED and reason.startswith(LEGACY_DIVERGED)
            if key not in rows and (t.state == TrialState.COMPLETE or legacy):
                arm, seed = self.arm_seed(t)
                failure = "diverged" if legacy else t.user_attrs.get(FAILURE)
                metrics = {k: t.user_attrs[k] for k in RESULT_KEYS if k in t.user_attrs}
                rows[key] = TrialRow(arm, seed, failure, metrics, self._curve(t))
            if t.state in (TrialState.FAIL, TrialState.PRUNED) and not self.noted(t) and reason:
                problems.append((key, f"{key}: {reason}"))  # none: a killed worker's, redone
        unrun = {k: why for k, why in self.incomplete().items() if k not in rows}
        running = sorted(k for k, why in unrun.items() if why in PENDING)
        failed = [line for key, line in problems if key not in rows]
        said = {key for key, _ in problems}
        failed += [f"{k}: {why}" for k, why in unrun.items() if why not in PENDING and k not in said]
        return with_worst(list(rows.values())), running, failed

    @staticmethod
    def _curve(trial: FrozenTrial) -> list[float]:
        """Validation accuracy per epoch: the intermediate values (cnnlab 0.1: ``history``)."""
        if trial.intermediate_values:
            return [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)]
        return [row.get(VAL_ACC, math.nan) for row in trial.user_attrs.get(LEGACY_HISTORY, [])]

