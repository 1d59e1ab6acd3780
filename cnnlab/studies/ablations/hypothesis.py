"""A spec's hypothesis: its expectations (arm higher / lower than another on a metric), read
from ``{claim, expect: [...]}`` with arms named by their factor levels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.metrics import METRICS, shown
from cnnlab.studies.specs import yaml_scalar

Factors = dict[str, dict[str, tuple[str, ...]]]  # factor → level → the overrides it adds
DIRECTIONS = ("higher", "lower", "equivalent")  # equivalent: within ±margin (the spec's)


@dataclass(frozen=True)
class Expectation:
    """``arm`` has a higher / lower ``metric`` than ``than``, or one equivalent within the
    spec's margin (paired by seed)."""

    arm: str
    than: str
    metric: str
    direction: str

    @property
    def sign(self) -> int:
        """+1 higher, −1 lower, 0 equivalent."""
        return {"higher": 1, "lower": -1}.get(self.direction, 0)

    def text(self) -> str:
        if self.direction == "equivalent":
            return f"{shown(self.metric)}: {self.arm} equivalent to {self.than}"
        return f"{shown(self.metric)}: {self.arm} {self.direction} than {self.than}"


@dataclass(frozen=True)
class Hypothesis:
    claim: str
    expect: tuple[Expectation, ...]


def arm_name(levels: dict[str, str]) -> str:
    return ", ".join(f"{factor}={level}" for factor, level in levels.items())




def metric_name(path: Path, key: str, name: Any) -> str:
    if not isinstance(name, str) or name not in METRICS:
        raise CnnlabError(f"spec {path}: {key}: unknown metric {name!r}; allowed: "
                          f"{', '.join(METRICS)}")
    return name


def levels_arm(path: Path, where: str, raw: Any, factors: Factors,
               base: dict[str, str]) -> str:
    """An arm named by its levels; factors left out take the baseline's level."""
    if not isinstance(raw, dict):
        raise CnnlabError(f"spec {path}: {where}: got {raw!r}; allowed: a mapping of factor to "
                          f"level, e.g. {{{next(iter(factors))}: ...}}")
    for factor, level in raw.items():
        if factor not in factors:
            raise CnnlabError(f"spec {path}: {where}: {factor!r} is not a factor; allowed: "
                              f"{', '.join(factors)}")
        text = level if isinstance(level, str) else yaml_scalar(level)
        if text not in factors[factor]:
            raise CnnlabError(f"spec {path}: {where}: {factor}={text} is not a level; allowed: "
                              f"{', '.join(factors[factor])}")
    return arm_name({f: level if isinstance(level := raw.get(f, base[f]), str)
                     else yaml_scalar(level) for f in factors})


def parse_hypothesis(path: Path, raw: Any, factors: Factors,
                     base: dict[str, str], metric: str) -> Hypothesis:
    """``{claim: text, expect: [{arm: {...}, than: {...}, metric: m, is: higher|lower}, ...]}``."""
    shape = ("{claim: text, expect: [{arm: {factor: level}, than: {factor: level} (default the "
             "baseline), metric: name (default the spec's), is: higher|lower|equivalent}, ...]}")
    if (not isinstance(raw, dict) or set(map(str, raw)) != {"claim", "expect"}
            or not isinstance(raw["expect"], list) or not raw["expect"]):
        raise CnnlabError(f"spec {path}: hypothesis: got {raw!r}; allowed: {shape}")
    expect = []
    for i, item in enumerate(raw["expect"]):
        where = f"hypothesis.expect[{i}]"
        if not isinstance(item, dict) or not {"arm", "is"} <= set(item) <= {"arm", "than",
                                                                            "metric", "is"}:
            raise CnnlabError(f"spec {path}: {where}: got {item!r}; allowed: {shape}")
        if item["is"] not in DIRECTIONS:
            raise CnnlabError(f"spec {path}: {where}.is: got {item['is']!r}; allowed: "
                              f"{', '.join(DIRECTIONS)}")
        arm = levels_arm(path, f"{where}.arm", item["arm"], factors, base)
        than = levels_arm(path, f"{where}.than", item.get("than", {}), factors, base)
        if arm == than:
            raise CnnlabError(f"spec {path}: {where}: compares arm {arm!r} with itself; allowed: "
                              "two different arms")
        name = metric_name(path, f"{where}.metric", item.get("metric", metric))
        if item["is"] == "equivalent" and name != metric:
            raise CnnlabError(f"spec {path}: {where}: equivalent on {name}; allowed: the spec's "
                              f"metric ({metric}), whose margin it is")
        expect.append(Expectation(arm, than, name, item["is"]))
    return Hypothesis(str(raw["claim"]), tuple(expect))
