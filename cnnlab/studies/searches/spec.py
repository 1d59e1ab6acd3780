"""Search specs: the space to sample, folds, trial count, sampler and pruner, validated."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import yaml

from cnnlab.config import ExperimentConfig, load_config
from cnnlab.errors import CnnlabError, count
from cnnlab.studies.specs import one_process, read_spec, safe_name, yaml_scalar

SPEC_KEYS = ("name", "description", "configs", "overrides", "space", "folds", "trials",
             "sampler", "pruner", "quick")
SPACE_TYPES = ("float", "int", "categorical")
# name -> pruner from the spec's options and the number of steps a trial reports
PRUNERS: dict[str, Callable[[dict[str, Any], int], optuna.pruners.BasePruner]] = {
    "median": lambda o, steps: optuna.pruners.MedianPruner(
        n_startup_trials=o.get("n_startup_trials", 5), n_warmup_steps=o.get("n_warmup_steps", 0)),
    "hyperband": lambda o, steps: optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=steps, reduction_factor=o.get("reduction_factor", 3)),
    "wilcoxon": lambda o, steps: optuna.pruners.WilcoxonPruner(
        p_threshold=o.get("p_threshold", 0.1), n_startup_steps=o.get("n_startup_steps", 1)),
    "none": lambda o, steps: optuna.pruners.NopPruner(),
}
SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}


@dataclass(frozen=True)
class SearchSpec:
    name: str
    description: str
    configs: tuple[str, ...]
    overrides: tuple[str, ...]
    space: dict[str, dict[str, Any]]
    folds: int
    trials: int
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    quick: tuple[str, ...]
    extra: tuple[str, ...] = ()  # the command line's key=value, after the quick preset

    def base_overrides(self, quick: bool) -> list[str]:
        """Every trial's overrides before its sampled parameters."""
        return [*self.overrides, *(self.quick if quick else ()), *self.extra]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "configs": list(self.configs),
                "overrides": list(self.overrides), "space": self.space, "folds": self.folds,
                "sampler": self.sampler, "pruner": self.pruner, "quick": list(self.quick)} | (
                    {"extra": list(self.extra)} if self.extra else {})  # older studies match

    @classmethod
    def from_dict(cls, d: dict[str, Any], trials: int = 0) -> SearchSpec:
        return cls(d["name"], d["description"], tuple(d["configs"]), tuple(d["overrides"]),
                   d["space"], d["folds"], trials, d["sampler"], d["pruner"], tuple(d["quick"]),
                   tuple(d.get("extra", ())))


def _fail(path: Path, what: str, allowed: str) -> CnnlabError:
    return CnnlabError(f"spec {path}: {what}; allowed: {allowed}")


MAX_TRIALS = 10_000  # a million wrote 39 MB of journal a minute before its first trial ended
TRIALS_WHY = "finished trials the study should hold"
MAX_FOLDS = 100
FOLDS_WHY = "k of k-fold cross-validation: 2 at least, for a validation fold and the rest"


def load_search_spec(path: Path) -> SearchSpec:
    """Read and validate a search spec; each dimension's bounds must make a valid config."""
    raw = read_spec(path, SPEC_KEYS)
    space = raw.get("space")
    if not isinstance(space, dict) or not space:
        raise _fail(path, "space is empty", "a mapping of config keys to {type: float|int|"
                    "categorical, ...}")
    for key, dim in space.items():
        kind = dim.get("type") if isinstance(dim, dict) else None
        if kind not in SPACE_TYPES:
            raise _fail(path, f"space.{key}.type is {kind!r}", ", ".join(SPACE_TYPES))
        if kind == "categorical":
            ok = isinstance(dim.get("choices"), list) and len(dim["choices"]) > 0
        else:
            low, high = dim.get("low"), dim.get("high")
            ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
            ok = ok and low < high and (not dim.get("log") or low > 0)
        if not ok:
            raise _fail(path, f"space.{key} is {dim}", "categorical with a list of choices, or "
                        "float/int with numbers low < high (log: true needs low > 0)")
        when = dim.get("when", {})
        earlier = list(space)[: list(space).index(key)]
        if not isinstance(when, dict) or not all(
                k in earlier and space[k]["type"] == "categorical" and isinstance(v, list)
                and all(c in space[k]["choices"] for c in v) for k, v in when.items()):
            raise _fail(path, f"space.{key}.when is {when!r}", "a mapping of an earlier categorical "
                        "key of the space to a list of its choices, e.g. {reg.kind: [l2, elastic]}")
    sampler = raw.get("sampler", {"name": "tpe", "seed": 0})
    pruner = raw.get("pruner", {"name": "median"})
    if sampler.get("name") not in SAMPLERS:
        raise _fail(path, f"unknown sampler {sampler.get('name')!r}", ", ".join(SAMPLERS))
    if pruner.get("name") not in PRUNERS:
        raise _fail(path, f"unknown pruner {pruner.get('name')!r}", ", ".join(PRUNERS))
    folds = count(f"spec {path}: folds", raw.get("folds", 3), 2, MAX_FOLDS, FOLDS_WHY)
    trials = count(f"spec {path}: trials", raw.get("trials", 20), 1, MAX_TRIALS, TRIALS_WHY)
    spec = SearchSpec(safe_name(str(raw.get("name") or path.stem)), str(raw.get("description", "")),
                      tuple(raw.get("configs", [])), tuple(raw.get("overrides", [])), space, folds,
                      trials, sampler, pruner, tuple(raw.get("quick", [])))
    for corner in CORNERS:  # both ends of every range must be valid configs
        try:
            one_process(corner_config(spec, corner))
        except CnnlabError as err:
            raise _fail(path, f"space at its {corner} end: {err}", "a space whose values are valid "
                        "config values") from None
    return spec


CORNERS = ("low", "high")


def corner_config(spec: SearchSpec, corner: str, quick: bool = False) -> ExperimentConfig:
    """The config at the ``low`` or ``high`` end of every range (first choice of categoricals)."""
    fixed = {k: (d["choices"][0] if d["type"] == "categorical" else d[corner])
             for k, d in spec.space.items()}
    return load_config(list(spec.configs), [*spec.base_overrides(quick), *as_overrides(fixed)])


def as_overrides(params: dict[str, Any]) -> list[str]:
    """Sampled params → overrides; ``key.0``, ``key.1``… build the list ``key`` (FC widths)."""
    lists: dict[str, dict[int, Any]] = {}
    out = []
    for key, value in params.items():
        match = re.fullmatch(r"(.+)\.(\d+)", key)
        if match:
            lists.setdefault(match[1], {})[int(match[2])] = value
        else:
            out.append(f"{key}={yaml_scalar(value)}")
    for key, items in lists.items():
        out.append(f"{key}={yaml_scalar([items[i] for i in sorted(items)])}")
    return out


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The trial's values, define-by-run: a key with ``when: {key: [choices]}`` is sampled only
    where it has an effect (``reg.strength`` only when a regularizer is on), else left at its
    config value, so Optuna neither ranks nor reports it for the other trials."""
    params: dict[str, Any] = {}
    for key, dim in space.items():
        if any(params.get(k) not in allowed for k, allowed in dim.get("when", {}).items()):
            continue
        if dim["type"] == "categorical":
            choices = [c if isinstance(c, str | int | float | bool) or c is None else yaml_scalar(c)
                       for c in dim["choices"]]
            value = trial.suggest_categorical(key, choices)
            params[key] = yaml.safe_load(value) if isinstance(value, str) and value[:1] == "[" else value
        elif dim["type"] == "int":
            params[key] = trial.suggest_int(key, dim["low"], dim["high"], log=dim.get("log", False))
        else:
            params[key] = trial.suggest_float(key, dim["low"], dim["high"], log=dim.get("log", False))
    return params


def with_overrides(spec: SearchSpec, trials: int | None, folds: int | None,
                   extra: tuple[str, ...] = ()) -> SearchSpec:
    """The spec with the command line's --trials / --folds and key=value overrides (which may
    not set a searched key: every trial would get the same value)."""
    fixed = sorted({o.partition("=")[0] for o in extra} & set(spec.space))
    if fixed:
        raise CnnlabError(f"override {fixed[0]}: the spec {spec.name} searches it; allowed: "
                          "keys outside its space")
    return replace(spec, extra=extra,
                   trials=spec.trials if trials is None else count(
                       "--trials", trials, 1, MAX_TRIALS, TRIALS_WHY),
                   folds=spec.folds if folds is None else count(
                       "--folds", folds, 2, MAX_FOLDS, FOLDS_WHY))
