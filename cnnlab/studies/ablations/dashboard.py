"""An ablation's W&B summary run, projected from its ``Results``: one numeric row per arm, the
confirmatory checks, the looks, and the report files as an artifact (``tracking.study_run``
writes it)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cnnlab.studies.ablations.results import Results
from cnnlab.tracking.summary import StudySummary


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def arm_records(results: Results) -> list[dict[str, Any]]:
    """One numeric row per arm (W&B's table): levels, seeds, failures, ITT and success-only
    means with their 95% intervals, the exploratory Δ and its unadjusted p."""
    rows = []
    for a in results.arms:
        c = a.delta
        rows.append({"arm": a.arm, **results.spec.level_values(a.levels), "n": a.seeds,
                     "failed": sum(a.failures.values()),
                     "mean": _number(a.itt.mean), "ci_low": _number(a.itt.low),
                     "ci_high": _number(a.itt.high), "success_mean": _number(a.success.mean),
                     "delta": None if c is None else _number(c.delta.mean),
                     "p_unadjusted": None if c is None else _number(c.p),
                     "failure_rate_p": _number(a.failure_p)}
                    | {metric: next(_number(i.mean) for name, i, _ in cells if name == a.arm)
                       for metric, cells in results.mechanisms.items()})
    return rows


def check_records(results: Results) -> list[dict[str, Any]]:
    """One row per confirmatory comparison: Δ, p, Holm p, the α it was tested at, the outcome."""
    return [{"arm": c.comparison.arm, "reference": c.comparison.reference,
             "metric": c.comparison.metric, "expected": c.expectation.direction or None,
             "delta": _number(c.comparison.delta.mean), "p": _number(c.comparison.p),
             "p_holm": _number(c.comparison.p_adj), "alpha": c.comparison.alpha,
             "look": c.comparison.look + 1 if c.comparison.decided else None,
             "outcome": c.outcome,
             "detectable": None if c.power is None or math.isinf(c.power.detectable)
             else c.power.detectable} for c in results.checks]


def study_summary(results: Results, files: list[Path], step: int) -> StudySummary:
    """The study's W&B summary run: the arms, checks and looks tables, a bar chart of the means,
    the metric against a numeric factor, the verdict and α spent in the summary."""
    spec = results.spec
    rows = arm_records(results)
    numbers: dict[str, Any] = {"alpha_spent": results.alpha_spent, "n_looks": len(results.looks),
                               "n_trials": len(results.trials)}  # "looks": the table
    for row in rows:
        numbers |= {f"{row['arm']}/{spec.metric}/{k}": row[k]
                    for k in ("mean", "ci_low", "ci_high", "delta", "failed")}
    if spec.hypothesis is not None:
        numbers |= {"hypothesis": spec.hypothesis.claim, "verdict": results.verdict}
    lines = []
    for factor in spec.factors:
        if rows and isinstance(rows[0][factor], float):  # a numeric factor: an axis
            others = [f for f in spec.factors if f != factor]
            lines.append(("arms", factor, "mean", others[0] if others else None))
    looks = [{"look": i + 1, "seeds": look.seeds, "alpha": look.alpha}
             for i, look in enumerate(results.looks)]
    return StudySummary(results.study, spec.description,
                        {"spec": spec.to_dict(), "preset": results.preset},
                        {"arms": rows, "checks": check_records(results), "looks": looks},
                        numbers, files, bar=("arms", "arm", "mean"), lines=lines, step=step)
