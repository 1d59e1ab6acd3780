"""Ablation specs (YAML in ``experiments/``): a base config, crossed factors, seeds, a metric.

A factor is either a config key with a list of values::

    model.norm: [batch, layer, instance, group, none]

or a name with named levels, each a bundle of overrides::

    dropout:
      none: {}
      spatial: {model.spatial_dropout: 0.2}

Arms are the cross product of the factors' levels; the baseline names one level per factor.
``metrics:`` lists the mechanism metrics the report shows beside the primary ``metric:``, and
``hypothesis:`` states a claim as expected directions of paired differences, which the report
answers. ``seeds: {min, max, step}`` adds seeds in rounds until every comparison is decided.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.config import ExperimentConfig, load_config, to_yaml
from cnnlab.errors import CnnlabError, count
from cnnlab.metrics import METRICS
from cnnlab.studies.ablations.hypothesis import (
    Expectation,
    Hypothesis,
    arm_name,
    metric_name,
    parse_hypothesis,
)
from cnnlab.studies.specs import one_process, read_spec, safe_name, yaml_scalar
from cnnlab.studies.statistics.sequential import Plan

SPEC_KEYS = ("name", "description", "configs", "overrides", "factors", "seeds", "metric",
             "metrics", "baseline", "quick", "margin", "hypothesis")
SEEDS_AUTO = {"min": 3, "max": 10, "step": 2}  # --seeds auto over a spec with fixed seeds
MAX_SEEDS = 1000  # per arm; cnnlab plan never asks for more (a million queued for minutes)
SEEDS_WHY = "seeds per arm; cnnlab plan says how many a comparison needs"
MAX_ARMS = 1000   # a 10⁶-arm spec validated for minutes
# The most seeds any study's α-spending plan reaches when its spec fixes a count (seeds: N): a
# later --seeds M or --seeds auto can add looks up to this many seeds and still spend α.
SEEDS_HORIZON = SEEDS_AUTO["max"]
PILOT_SEED = 1000  # a pilot's first seed: confirmatory studies use 0, 1, … (never this many)
PILOT_SEEDS = 3  # a pilot's seeds per arm unless --seeds says otherwise
SEED_KEYS = ("seeds", "max_seeds", "seed_step")  # how many seeds: may change between runs
REPORT_KEYS = ("description", "metrics", "margin", "hypothesis")  # read by the report only
@dataclass(frozen=True)
class Arm:
    """One cell of the grid: its name, its level per factor and the overrides it adds."""

    name: str
    levels: dict[str, str]
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class AblationSpec:
    name: str
    description: str
    configs: tuple[str, ...]
    overrides: tuple[str, ...]
    factors: dict[str, dict[str, tuple[str, ...]]]  # factor → level → overrides
    seeds: int  # per arm; the first round's when seeds are added until decided
    metric: str
    baseline: str
    quick: tuple[str, ...]
    metrics: tuple[str, ...] = ()
    margin: float = 0.01  # equivalence margin of the primary metric (its units)
    hypothesis: Hypothesis | None = None
    max_seeds: int = 0  # ≥ seeds: a plan of rounds, seed_step more seeds to undecided arms
    seed_step: int = 2
    extra: tuple[str, ...] = ()  # the command line's key=value, after the quick preset
    first_seed: int = 0  # the seed of each arm's first run (a pilot's: PILOT_SEED)

    @property
    def auto(self) -> bool:
        """Seeds are added in rounds while the hypothesis is undecided."""
        return self.max_seeds > self.seeds

    @property
    def plan(self) -> Plan:
        """The α-spending plan of a new study of this spec (``sequential``): looks from
        ``seeds`` up to ``max_seeds`` (a fixed count: up to ``SEEDS_HORIZON``, so seeds added
        later still have α to spend; ``{min: N, max: N}``: one look with all of α)."""
        most = self.max_seeds if self.max_seeds >= self.seeds else max(self.seeds, SEEDS_HORIZON)
        return Plan(self.seeds, most, self.seed_step)

    @property
    def arms(self) -> list[Arm]:
        names = list(self.factors)
        arms = []
        for combo in itertools.product(*(self.factors[f].items() for f in names)):
            levels = {f: level for f, (level, _) in zip(names, combo, strict=True)}
            overrides = tuple(o for _, ovr in combo for o in ovr)
            arms.append(Arm(arm_name(levels), levels, overrides))
        return arms

    @property
    def direction(self) -> str:
        return METRICS[self.metric].direction

    def level_values(self, levels: dict[str, str]) -> dict[str, float | str]:
        """An arm's levels as the dashboard sorts them: a number for a factor whose every level
        is one (``optim.lr: [0.0003, 0.006]``), else the level's name."""
        numeric = {f for f, named in self.factors.items() if all(map(_numeric_text, named))}
        return {f: float(level) if f in numeric else level for f, level in levels.items()}

    def trial_overrides(self, arm: Arm, seed: int, quick: bool) -> list[str]:
        """Everything after the base config files: base, quick preset, command line, arm, seed."""
        return [*self.overrides, *(self.quick if quick else ()), *self.extra, *arm.overrides,
                f"seed={self.first_seed + seed}"]

    def config(self, arm: Arm, seed: int, quick: bool) -> ExperimentConfig:
        return load_config(list(self.configs), self.trial_overrides(arm, seed, quick))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AblationSpec:
        """From ``to_dict`` (a study's ``spec`` attribute; cnnlab ≤ 0.2 stored fewer keys)."""
        factors = {f: {lv: tuple(o) for lv, o in levels.items()} for f, levels in d["factors"].items()}
        hyp = d.get("hypothesis")
        hypothesis = None if hyp is None else Hypothesis(
            hyp["claim"], tuple(Expectation(**e) for e in hyp["expect"]))
        return cls(d["name"], d["description"], tuple(d["configs"]), tuple(d["overrides"]), factors,
                   d.get("seeds", 0), d["metric"], d["baseline"], tuple(d["quick"]),
                   tuple(d.get("metrics", ())), d.get("margin", 0.01), hypothesis,
                   d.get("max_seeds", 0), d.get("seed_step", 2), tuple(d.get("extra", ())),
                   d.get("first_seed", 0))

    def to_dict(self) -> dict[str, Any]:
        hyp = None if self.hypothesis is None else {
            "claim": self.hypothesis.claim,
            "expect": [dataclasses.asdict(e) for e in self.hypothesis.expect]}
        return {"name": self.name, "description": self.description, "configs": list(self.configs),
                "overrides": list(self.overrides), "seeds": self.seeds, "metric": self.metric,
                "baseline": self.baseline, "quick": list(self.quick),
                "factors": {f: {lv: list(o) for lv, o in levels.items()}
                            for f, levels in self.factors.items()},
                "metrics": list(self.metrics), "margin": self.margin, "hypothesis": hyp,
                "max_seeds": self.max_seeds, "seed_step": self.seed_step} | (
                    {"extra": list(self.extra)} if self.extra else {}) | (
                    {"first_seed": self.first_seed} if self.first_seed else {})  # older match

    def with_extra(self, extra: tuple[str, ...]) -> AblationSpec:
        """The command line's key=value overrides for every trial (not a factor's key: the arms
        would no longer differ in it); they are part of the stored spec."""
        factors = {k for levels in self.factors.values() for o in levels.values() for k in _keys(o)}
        clash = sorted(_keys(extra) & factors)
        if clash:
            raise CnnlabError(f"override {clash[0]}: the spec {self.name} varies it between arms; "
                              "allowed: keys its factors do not set")
        return dataclasses.replace(self, extra=extra)

    def as_pilot(self, seeds: int) -> AblationSpec:
        """The spec's pilot: ``<name>-pilot``, ``seeds`` runs an arm from seed PILOT_SEED, so a
        design chosen from it is confirmed on seeds it never saw (0, 1, …)."""
        seeds = count("--seeds", seeds, 1, MAX_SEEDS, SEEDS_WHY)
        return dataclasses.replace(self, name=f"{self.name}-pilot", seeds=seeds, max_seeds=0,
                                   first_seed=PILOT_SEED)

    def with_seeds(self, seeds: int | str) -> AblationSpec:
        """``--seeds N`` (N fixed) or ``--seeds auto`` (from the spec's count, in rounds)."""
        if seeds == "auto":
            if self.auto:
                return self
            step = SEEDS_AUTO["step"]
            return dataclasses.replace(self, max_seeds=max(SEEDS_AUTO["max"], self.seeds + step),
                                       seed_step=step)
        return dataclasses.replace(self, seeds=count("--seeds", seeds, 1, MAX_SEEDS, SEEDS_WHY),
                                   max_seeds=0)




def _overrides(where: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise CnnlabError(f"{where}: got {value!r}; allowed: a list of key=value strings")


RESERVED = {"seed": "seeds: N (every arm runs the same N seeds, paired by seed)"}


def _factor(path: Path, name: str, body: Any) -> dict[str, tuple[str, ...]]:
    where = f"{path}: factors.{name}"
    if name in RESERVED:
        raise CnnlabError(f"spec {where}: {name} is the replication axis, not a factor; allowed: "
                          f"{RESERVED[name]}")
    if isinstance(body, list) and body:
        values = [yaml_scalar(v) for v in body]
        twice = sorted({level for level in values if values.count(level) > 1})
        if twice:
            raise CnnlabError(f"spec {where}: level {twice[0]} appears twice (as {body}); allowed: "
                              "distinct values, one arm each")
        return {level: (f"{name}={level}",) for level in values}
    if isinstance(body, dict) and body:
        levels: dict[str, tuple[str, ...]] = {}
        for level, bundle in body.items():
            if not isinstance(bundle, dict):
                raise CnnlabError(f"spec {where}.{level}: got {bundle!r}; allowed: a mapping of "
                                  "config keys to values ({} for the base config)")
            reserved = sorted(set(map(str, bundle)) & set(RESERVED))
            if reserved:
                raise CnnlabError(f"spec {where}.{level}: sets {reserved[0]}, the replication "
                                  f"axis; allowed: {RESERVED[reserved[0]]}")
            levels[str(level)] = tuple(f"{k}={yaml_scalar(v)}" for k, v in bundle.items())
        return levels
    raise CnnlabError(f"spec {where}: got {body!r}; allowed: a non-empty list of values for a "
                      "config key, or a non-empty mapping of level names to overrides")


def _keys(overrides: tuple[str, ...]) -> set[str]:
    return {o.partition("=")[0] for o in overrides}


def _check_disjoint(path: Path, factors: dict[str, dict[str, tuple[str, ...]]]) -> None:
    """Two factors setting one config key would let the later silently win over the earlier."""
    owner: dict[str, str] = {}
    for name, levels in factors.items():
        for key in set().union(*(_keys(o) for o in levels.values())):
            if key in owner:
                raise CnnlabError(f"spec {path}: factors {owner[key]} and {name} both set {key}; "
                                  "allowed: each config key in one factor")
            owner[key] = name


def _numeric_text(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _seeds(path: Path, raw: Any) -> tuple[int, int, int]:
    """``seeds: N`` → (N, 0, 2); ``seeds: {min, max, step}`` → (min, max, step)."""
    if isinstance(raw, dict):
        unknown = sorted(set(map(str, raw)) - set(SEEDS_AUTO))
        values = {**SEEDS_AUTO, **raw}
        if unknown or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                              for v in values.values()) or values["max"] < values["min"]:
            raise CnnlabError(f"spec {path}: seeds is {raw!r}; allowed: a positive integer, or "
                              "{min: 3, max: 10, step: 2} (positive integers, max ≥ min) to add "
                              "step seeds per round until the hypothesis is decided")
        count(f"spec {path}: seeds max", values["max"], 1, MAX_SEEDS, SEEDS_WHY)
        return values["min"], values["max"], values["step"]
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
        raise CnnlabError(f"spec {path}: seeds is {raw!r}; allowed: a positive integer, or "
                          "{min: 3, max: 10, step: 2}")
    return count(f"spec {path}: seeds", raw, 1, MAX_SEEDS, SEEDS_WHY), 0, SEEDS_AUTO["step"]




def load_spec(path: Path) -> AblationSpec:
    """Read and validate an ablation spec; every arm's config is validated too."""
    raw = read_spec(path, SPEC_KEYS)
    factors_raw = raw.get("factors")
    if not isinstance(factors_raw, dict) or not factors_raw:
        raise CnnlabError(f"spec {path}: factors is empty; allowed: at least one factor with "
                          "levels, e.g. factors: {{model.norm: [batch, none]}}")
    factors = {str(name): _factor(path, str(name), body) for name, body in factors_raw.items()}
    n_arms = math.prod(len(levels) for levels in factors.values())
    if n_arms > MAX_ARMS:  # before a config is built for each
        raise CnnlabError(f"spec {path}: its factors make {n_arms:,} arms; allowed: at most "
                          f"{MAX_ARMS:,} (each arm runs every seed)")
    _check_disjoint(path, factors)
    metric = metric_name(path, "metric", raw.get("metric", "test_acc"))
    metrics_raw = raw.get("metrics", [])
    if not isinstance(metrics_raw, list):
        raise CnnlabError(f"spec {path}: metrics is {metrics_raw!r}; allowed: a list of "
                          f"{', '.join(METRICS)}")
    metrics = tuple(metric_name(path, "metrics", m) for m in metrics_raw)
    margin = raw.get("margin", 0.01)
    if not _number(margin) or not margin > 0:
        raise CnnlabError(f"spec {path}: margin is {margin!r}; allowed: a positive number in "
                          f"{metric}'s units (the equivalence margin)")
    seeds, max_seeds, seed_step = _seeds(path, raw.get("seeds", 3))
    baseline_raw = raw.get("baseline") or {f: next(iter(levels)) for f, levels in factors.items()}
    if not isinstance(baseline_raw, dict):
        raise CnnlabError(f"spec {path}: baseline is {baseline_raw!r}; allowed: a mapping of "
                          "factor to level")
    unknown = sorted(set(map(str, baseline_raw)) - set(factors))
    if unknown:
        raise CnnlabError(f"spec {path}: baseline names {unknown[0]!r}, not a factor; allowed: "
                          f"{', '.join(factors)}")
    baseline = arm_name({f: level if isinstance(level := baseline_raw.get(f), str)
                         else yaml_scalar(level) for f in factors})
    name = str(raw.get("name") or path.stem)
    spec = AblationSpec(
        name=safe_name(name),
        description=str(raw.get("description", "")),
        configs=_overrides(f"spec {path}: configs", raw.get("configs", [])),
        overrides=_overrides(f"spec {path}: overrides", raw.get("overrides", [])),
        factors=factors,
        seeds=seeds,
        metric=metric,
        baseline=baseline,
        quick=_overrides(f"spec {path}: quick", raw.get("quick", [])),
        metrics=metrics,
        margin=float(margin),
        max_seeds=max_seeds,
        seed_step=seed_step,
    )
    arms = [arm.name for arm in spec.arms]
    if baseline not in arms:
        raise CnnlabError(f"spec {path}: baseline {baseline!r} is not an arm; allowed: "
                          + "; ".join(arms))
    if "hypothesis" in raw:
        spec = dataclasses.replace(spec, hypothesis=parse_hypothesis(
            path, raw["hypothesis"], spec.factors,
            next(a.levels for a in spec.arms if a.name == spec.baseline), spec.metric))
    seen: dict[str, str] = {}
    for arm in spec.arms:
        try:
            one_process(spec.config(arm, 0, quick=True))
            full = spec.config(arm, 0, quick=False)
            one_process(full)
        except CnnlabError as err:
            raise CnnlabError(f"spec {path}: arm {arm.name!r}: {err}") from None
        same = seen.setdefault(to_yaml(full), arm.name)
        if same != arm.name:
            raise CnnlabError(f"spec {path}: arms {same!r} and {arm.name!r} have the same config; "
                              "allowed: levels that change something")
    return spec
