"""The metrics a run records, in one table: their direction, range, exact form and failure value.

``training.run`` writes these names and studies read them back, so both use this table.

- **Counts.** An accuracy is a count of correct images over a finite set; a run records the
  count and the size next to the fraction (``test_correct`` / ``test_total`` …), and comparisons
  use the counts, so "one image worse on every seed" is an exact tie, not float jitter.
- **Failures.** A run *failed* when it diverged (training loss NaN, infinite, or above ten times
  a uniform guess's) or collapsed (its tested accuracy within ``COLLAPSE_MARGIN`` of the
  majority-class share: it predicts about one class). ``failure_of`` is the one definition.
  A failed run is an outcome of its arm: its metrics enter the statistics at the metric's
  failure value (intention-to-treat), never dropped, and never better than any run's value
  (``failure_value``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

INF = math.inf
COLLAPSE_MARGIN = 0.02  # accuracy ≤ majority share + this: the run predicts about one class
FAILURES = ("diverged", "collapsed")


@dataclass(frozen=True)
class Metric:
    """A run metric: which way is better, its range, what it measures, its exact form.

    ``counted``: the split whose (correct, total) counts make the value exact (accuracies).
    ``rates``: compared as failure counts (Boschloo), not paired differences.
    ``failure``: what a failed run enters the statistics with: ``chance`` (the majority-class
    share, as a count where counted), ``censored`` (the bound of never reaching the target:
    max_epochs + 1), or ``worst`` (the worst end of its range, or the worst value seen where
    the range is open).
    """

    direction: str
    bounds: tuple[float, float]
    meaning: str
    counted: str | None = None
    failure: str = "worst"
    rates: bool = False
    step: float = 0.0  # the lattice of its values where uncounted whole numbers (epochs: 1)

    @property
    def worst(self) -> float:
        return self.bounds[0] if self.direction == "maximize" else self.bounds[1]


METRICS: dict[str, Metric] = {
    "test_acc": Metric("maximize", (0, 1), "test accuracy (best validation epoch's weights)",
                       "test", "chance"),
    "val_acc": Metric("maximize", (0, 1), "best validation accuracy", "val", "chance"),
    "train_acc": Metric("maximize", (0, 1), "accuracy on the (un-augmented) training split",
                        "train", "chance"),
    "test_loss": Metric("minimize", (0, INF), "test cross-entropy"),
    "train_loss": Metric("minimize", (0, INF), "last epoch's training loss"),
    "fit_seconds": Metric("minimize", (0, INF), "wall seconds of training"),
    "generalization_gap": Metric("minimize", (-1, 1), "train_acc − test_acc (overfitting)"),
    "weight_sparsity": Metric("maximize", (0, 1), "share of conv/linear weights with |w| < 1e-3"),
    "weight_l2": Metric("minimize", (0, INF), "L2 norm of all conv/linear weights"),
    "epochs_to_target": Metric("minimize", (1, INF),
                               "first epoch with val accuracy ≥ trainer.target_acc "
                               "(never: max_epochs + 1, drawn as censored)", failure="censored",
                               step=1.0),
    "bn_train_eval_gap": Metric("maximize", (-1, 1),
                                "val accuracy with batch statistics − with running statistics"),
    "failed": Metric("minimize", (0, 1), "share of runs that failed (diverged or collapsed)",
                     rates=True),
}
STORED = tuple(name for name, m in METRICS.items() if not m.rates)  # what a run records
# shown when a spec names no ``metrics:`` (and only those that differ between arms)
MECHANISMS = ("train_acc", "generalization_gap", "weight_sparsity", "weight_l2",
              "epochs_to_target", "bn_train_eval_gap")


def logged(split: str, name: str) -> str:
    """The name an epoch metric is logged under (Lightning, W&B, history.csv): ``val/acc``."""
    return f"{split}/{name}"


def count_key(split: str, part: str) -> str:
    """A run's count of a split's images: ``test_correct``, ``test_total``."""
    return f"{split}_{part}"


VAL_ACC, VAL_LOSS = logged("val", "acc"), logged("val", "loss")
TEST_ACC, TEST_LOSS, TRAIN_LOSS = logged("test", "acc"), logged("test", "loss"), logged("train", "loss")
COUNT_KEYS = tuple(count_key(split, part) for split in ("test", "val", "train")
                   for part in ("correct", "total"))
# Everything a study trial keeps of a run's metrics (besides the failure).
RESULT_KEYS = (*STORED, "epochs", "max_epochs", *COUNT_KEYS, "chance_acc")
FAILURE = "failure"  # metrics.json and trial attribute: "diverged", "collapsed" or None


def counts(correct_share: float, total: int) -> int:
    """The number of correct images behind an accuracy of ``total`` images (float32-exact)."""
    return round(correct_share * total)


def failure_of(metrics: dict[str, Any]) -> str | None:
    """``diverged``, ``collapsed`` or None: the one definition of a failed run."""
    if metrics.get("diverged"):
        return "diverged"
    acc = metrics.get("test_acc", metrics.get("val_acc"))
    chance = metrics.get("chance_acc")
    if acc is not None and chance is not None and acc <= chance + COLLAPSE_MARGIN:
        return "collapsed"
    return None


def dashboard_values(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` as W&B summary columns, one type per key: a censored metric that never reached
    its target (None, which W&B would drop, so the run would read as not measured) becomes its
    bound, ``max_epochs + 1``, with ``<name>_censored`` true; reached, the value with false."""
    out = dict(metrics)
    for name, m in METRICS.items():
        if m.failure == "censored" and name in metrics:
            out[f"{name}_censored"] = metrics[name] is None
            if metrics[name] is None and metrics.get("max_epochs") is not None:
                out[name] = metrics["max_epochs"] + 1
    return out


def failure_value(metric: str, row: dict[str, Any], worst_seen: float | None) -> float | None:
    """What a failed run's ``metric`` enters the statistics with (None: the metric does not
    apply to the run, e.g. ``bn_train_eval_gap`` without batch norm): a value no run is worse
    than, whatever the failed run measured (a collapsed net's small weights or zero
    generalization gap must not flatter it).

    Accuracies: the majority-class share (a collapsed run's accuracy), or lower where a run that
    did not fail scored lower; other metrics: the worst end of the metric's range where it is
    finite, else ``worst_seen`` — the worst finite value the study's runs that did not fail
    measured, or the failed run's own where worse (worst rank).
    Censored metrics are the reader's: it knows max_epochs.
    """
    m = METRICS[metric]
    if m.failure == "chance" and row.get("chance_acc") is not None:
        chance = float(row["chance_acc"])
        return chance if worst_seen is None else min(chance, worst_seen)
    if row.get(metric) is None:
        return None
    return m.worst if math.isfinite(m.worst) else worst_seen


def worse(metric: str, a: float | None, b: float | None) -> float | None:
    """The worse of two values of ``metric`` (None: no value)."""
    if a is None or b is None:
        return b if a is None else a
    return min(a, b) if METRICS[metric].direction == "maximize" else max(a, b)


SHOWN = {"failed": "failure rate"}  # a metric named as a reader reads it ("failed: …" read as a status)


def shown(metric: str) -> str:
    """How reports and the console name ``metric``."""
    return SHOWN.get(metric, metric)
