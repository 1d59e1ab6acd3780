"""The trial record: the names of a study trial's attributes (what a dashboard shows), and
finished trials read back from the storage as typed rows, one per arm × seed.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from cnnlab.errors import CnnlabError
from cnnlab.metrics import FAILURE, METRICS, RESULT_KEYS, failure_value, worse

# Trial user attributes, one name each (a dashboard shows them under these names).
KEY = "key"              # the unit of work: "<arm> | seed=<n>" (ablation), "slot <n>" (search)
ARM, SEED = "arm", "seed"                 # an ablation trial's arm and seed
CONFIGS, OVERRIDES = "configs", "overrides"  # what an ablation trial runs
WORKER = "worker"        # host:pid of the process that runs (or ran) the trial
HEARTBEAT = "heartbeat"  # Unix time of that worker's last sign of life
REASON = "reason"        # why the trial failed or was pruned
NOTE = "note"            # the trial ran nothing (a lost race for queued work)
FOLD_SCORES, FOLD_EPOCHS, CV_STD = "fold_scores", "fold_epochs", "cv_std"
QUEUED = (KEY, ARM, SEED, CONFIGS, OVERRIDES)  # what a lost trial's requeued copy keeps
LEGACY_REASON = "error"  # cnnlab 0.1 stored an ablation's failure here,
LEGACY_HISTORY = "history"  # and its per-epoch metrics here

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # pruned: diverged or stopped; not redone
LEGACY_DIVERGED = "diverged"  # how cnnlab ≤ 0.3 began a diverged (pruned) trial's reason



def reason_of(trial: FrozenTrial) -> str | None:
    return trial.user_attrs.get(REASON) or trial.user_attrs.get(LEGACY_REASON)


def arm_seed(attrs: dict[str, Any], params: dict[str, Any]) -> tuple[str, int]:
    """A trial's arm and seed (user attributes; studies of cnnlab 0.1 kept them as parameters)."""
    if ARM in attrs:
        return str(attrs[ARM]), int(attrs[SEED])
    return str(params["arm"]), int(params["seed"])


def val_curve(trial: optuna.trial.FrozenTrial) -> list[float]:
    """Validation accuracy per epoch: the intermediate values (cnnlab 0.1: a ``history`` attr)."""
    if trial.intermediate_values:
        return [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)]
    return [row.get("val/acc", math.nan) for row in trial.user_attrs.get(LEGACY_HISTORY, [])]


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
        total = self.metrics.get(f"{split}_total") if split else None
        value = self.value(metric)
        return None if not total or value is None else (float(round(value * total)), int(total))


def read_trials(study: optuna.Study) -> tuple[list[TrialRow], list[str], list[str]]:
    """The finished trials (one per arm × seed), the keys still running or queued, and one line
    per trial that failed to run (an error, not a failed training)."""
    rows: dict[str, TrialRow] = {}
    problems: list[tuple[str, str]] = []
    running: list[str] = []
    for t in study.get_trials(deepcopy=False):
        key = t.user_attrs.get(KEY)
        if key is None:
            continue
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            running.append(key)
        reason = reason_of(t) or ""
        legacy = t.state == TrialState.PRUNED and reason.startswith(LEGACY_DIVERGED)
        if key not in rows and (t.state == TrialState.COMPLETE or legacy):
            arm, seed = arm_seed(t.user_attrs, t.params)
            failure = "diverged" if legacy else t.user_attrs.get(FAILURE)
            metrics = {k: t.user_attrs[k] for k in RESULT_KEYS if k in t.user_attrs}
            rows[key] = TrialRow(arm, seed, failure, metrics, val_curve(t))
        if t.state in (TrialState.FAIL, TrialState.PRUNED) and NOTE not in t.user_attrs and reason:
            problems.append((key, f"{key}: {reason}"))  # none: a killed worker's, redone
    failed = [line for key, line in problems if key not in rows]
    return with_worst(list(rows.values())), sorted(set(running) - set(rows)), failed


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
    need = {ARM, SEED, FAILURE}
    if not table or not need <= set(table[0]):
        raise CnnlabError(f"pilot {path}: no rows with columns {', '.join(sorted(need))}; "
                          "allowed: a results.csv of cnnlab ablate")
    rows = []
    for line in table:
        try:
            metrics = {k: float(line[k]) for k in RESULT_KEYS if line.get(k)}
            seed = int(line[SEED])
        except ValueError as e:
            raise CnnlabError(f"pilot {path}: {e}; allowed: numbers in the metric columns") from None
        bound = metrics.get("max_epochs", math.inf) + 1
        if "epochs_to_target" in metrics and metrics["epochs_to_target"] >= bound:
            metrics["epochs_to_target"] = None  # type: ignore[assignment]
        rows.append(TrialRow(line[ARM], seed, line[FAILURE] or None, metrics, []))
    return with_worst(rows)
