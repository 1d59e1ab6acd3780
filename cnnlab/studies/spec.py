"""Ablation specs (YAML in ``experiments/``): a base config, crossed factors, seeds, a metric.

A factor is either a config key with a list of values::

    model.norm: [batch, layer, instance, group, none]

or a name with named levels, each a bundle of overrides::

    dropout:
      none: {}
      spatial: {model.spatial_dropout: 0.2}

Arms are the cross product of the factors' levels; the baseline names one level per factor.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cnnlab.config import ExperimentConfig, load_config, load_yaml, to_yaml
from cnnlab.errors import CnnlabError

METRICS = {"test_acc": "maximize", "val_acc": "maximize", "test_loss": "minimize",
           "train_loss": "minimize", "fit_seconds": "minimize"}
SPEC_KEYS = ("name", "description", "configs", "overrides", "factors", "seeds", "metric",
             "baseline", "quick")


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
    seeds: int
    metric: str
    baseline: str
    quick: tuple[str, ...]

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
        return METRICS[self.metric]

    def trial_overrides(self, arm: Arm, seed: int, quick: bool) -> list[str]:
        """Everything after the base config files: base, quick preset, arm, seed."""
        return [*self.overrides, *(self.quick if quick else ()), *arm.overrides, f"seed={seed}"]

    def config(self, arm: Arm, seed: int, quick: bool) -> ExperimentConfig:
        return load_config(list(self.configs), self.trial_overrides(arm, seed, quick))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AblationSpec:
        factors = {f: {lv: tuple(o) for lv, o in levels.items()} for f, levels in d["factors"].items()}
        return cls(d["name"], d["description"], tuple(d["configs"]), tuple(d["overrides"]), factors,
                   d["seeds"], d["metric"], d["baseline"], tuple(d["quick"]))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "configs": list(self.configs),
                "overrides": list(self.overrides), "seeds": self.seeds, "metric": self.metric,
                "baseline": self.baseline, "quick": list(self.quick),
                "factors": {f: {lv: list(o) for lv, o in levels.items()}
                            for f, levels in self.factors.items()}}


def arm_name(levels: dict[str, str]) -> str:
    return ", ".join(f"{factor}={level}" for factor, level in levels.items())


def safe_name(text: str) -> str:
    """A file-system-safe version of a study, arm or run name (no separators, no '..')."""
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).replace("..", "_").strip("._") or "_"


def one_process(cfg: ExperimentConfig) -> None:
    """A study's trial is one process; parallelism comes from workers, not from DDP per trial."""
    for key, value in (("trainer.devices", cfg.trainer.devices),
                       ("trainer.num_nodes", cfg.trainer.num_nodes)):
        if value != 1:
            raise CnnlabError(f"{key}: got {value}; allowed: 1 in a study (run several trials at "
                              "once with --workers, or with workers on more machines sharing one "
                              "PostgreSQL --storage)")


def yaml_scalar(value: Any) -> str:
    """A value as it reads in a key=value override."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


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
        levels = [yaml_scalar(v) for v in body]
        twice = sorted({level for level in levels if levels.count(level) > 1})
        if twice:
            raise CnnlabError(f"spec {where}: level {twice[0]} appears twice (as {body}); allowed: "
                              "distinct values, one arm each")
        return {level: (f"{name}={level}",) for level in levels}
    if isinstance(body, dict) and body:
        levels = {}
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


def read_spec(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """A spec file's top-level mapping; unreadable files, bad YAML and unknown keys are errors."""
    raw = load_yaml(path, "spec")
    if not isinstance(raw, dict):
        raise CnnlabError(f"spec {path}: top level is {type(raw).__name__}; allowed: a mapping "
                          f"with keys {', '.join(keys)}")
    unknown = sorted(set(map(str, raw)) - set(keys))
    if unknown:
        raise CnnlabError(f"spec {path}: unknown key {unknown[0]!r}; allowed: {', '.join(keys)}")
    return raw


def load_spec(path: Path) -> AblationSpec:
    """Read and validate an ablation spec; every arm's config is validated too."""
    raw = read_spec(path, SPEC_KEYS)
    factors_raw = raw.get("factors")
    if not isinstance(factors_raw, dict) or not factors_raw:
        raise CnnlabError(f"spec {path}: factors is empty; allowed: at least one factor with "
                          "levels, e.g. factors: {{model.norm: [batch, none]}}")
    factors = {str(name): _factor(path, str(name), body) for name, body in factors_raw.items()}
    _check_disjoint(path, factors)
    metric = raw.get("metric", "test_acc")
    if not isinstance(metric, str) or metric not in METRICS:
        raise CnnlabError(f"spec {path}: unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    seeds = raw.get("seeds", 3)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise CnnlabError(f"spec {path}: seeds is {seeds!r}; allowed: a positive integer")
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
    )
    arms = [arm.name for arm in spec.arms]
    if baseline not in arms:
        raise CnnlabError(f"spec {path}: baseline {baseline!r} is not an arm; allowed: "
                          + "; ".join(arms))
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
