"""An ablation's finished runs as typed rows, one per arm × seed: what each enters the
statistics with (intention-to-treat), read back from the store or a results.csv.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.metrics import FAILURE, METRICS, RESULT_KEYS, count_key, failure_value, worse


@dataclass(frozen=True)
class TrialRow:
    """One finished arm × seed: its stored metrics and whether (how) it failed."""

    arm: str
    seed: int
    failure: str | None
    metrics: dict[str, Any]
    curve: list[float]
    worst: dict[str, float] = field(default_factory=dict)  # per metric: the study's worst value

    @property
    def censored(self) -> bool:
        """It never reached the target accuracy: its ``epochs_to_target`` is a lower bound."""
        return "epochs_to_target" in self.metrics and self.metrics["epochs_to_target"] is None

    def _never(self) -> float | None:
        """max_epochs + 1: the bound a run that never reached the target enters with."""
        epochs = self.metrics.get("max_epochs", self.metrics.get("epochs"))
        return None if epochs is None else float(epochs) + 1

    def measured(self, metric: str) -> float | None:
        """The metric as the run measured it (never reached: the censoring bound)."""
        if metric == "epochs_to_target" and self.censored:
            return self._never()
        value = self.metrics.get(metric)
        return None if value is None else float(value)

    def finite(self, metric: str) -> float | None:
        """The measured value where it is a finite number."""
        value = self.measured(metric)
        return value if value is not None and math.isfinite(value) else None

    def value(self, metric: str) -> float | None:
        """What the run enters the statistics with (intention-to-treat): its measurement, or
        for a failed run (or a measurement that is not finite) the failure value."""
        if METRICS[metric].rates:
            return float(self.failure is not None)
        value = self.finite(metric)
        if self.failure is None and (value is not None or self.measured(metric) is None):
            return value
        if METRICS[metric].failure == "censored":
            return self._never()
        own = None if METRICS[metric].failure == "chance" else value  # below chance: chance
        return failure_value(metric, self.metrics, worse(metric, self.worst.get(metric), own))

    def exact(self, metric: str) -> tuple[float, int] | None:
        """(count, total) of a counted metric (its value × total, rounded), or None."""
        split = METRICS[metric].counted
        total = self.metrics.get(count_key(split, "total")) if split else None
        value = self.value(metric)
        return None if not total or value is None else (float(round(value * total)), int(total))


def with_worst(rows: list[TrialRow]) -> list[TrialRow]:
    """``rows`` knowing each metric's worst finite value over the runs that did not fail, which
    a failed run enters with (or its own, if worse) where the metric's range has no finite
    worst end."""
    worst: dict[str, float] = {}
    for row in rows:
        for metric in METRICS if row.failure is None else ():
            if not METRICS[metric].rates and (v := row.finite(metric)) is not None:
                worst[metric] = worse(metric, worst.get(metric), v)  # type: ignore[assignment]
    return [replace(row, worst=worst) for row in rows]




def csv_trials(path: Path) -> list[TrialRow]:
    """The trials of an ablation's ``results.csv`` (as ``report.results_csv`` writes it): a
    shipped pilot is one. A censored metric comes back censored (its bound, max_epochs + 1)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            table = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CnnlabError(f"pilot {path}: {e}; allowed: a results.csv of cnnlab ablate") from None
    need = {"arm", "seed", FAILURE}
    if not table or not need <= set(table[0]):
        raise CnnlabError(f"pilot {path}: no rows with columns {', '.join(sorted(need))}; "
                          "allowed: a results.csv of cnnlab ablate")
    rows = []
    for line in table:
        try:
            metrics = {k: float(line[k]) for k in RESULT_KEYS if line.get(k)}
            seed = int(line["seed"])
        except ValueError as e:
            raise CnnlabError(f"pilot {path}: {e}; allowed: numbers in the metric columns") from None
        bound = metrics.get("max_epochs", math.inf) + 1
        if "epochs_to_target" in metrics and metrics["epochs_to_target"] >= bound:
            metrics["epochs_to_target"] = None  # type: ignore[assignment]
        rows.append(TrialRow(line["arm"], seed, line[FAILURE] or None, metrics, []))
    return with_worst(rows)
