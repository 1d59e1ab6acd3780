"""An ablation's W&B summary run, projected from its ``Results``: one numeric row per arm, the
confirmatory checks, the looks, and the report files as an artifact (``tracking.study_run``
writes it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnlab.studies.ablations.results import Results
from cnnlab.tracking.summary import StudySummary


def study_summary(results: Results, files: list[Path], step: int) -> StudySummary:
    """The study's W&B summary run: the arms, checks and looks tables, a bar chart of the means,
    the metric against a numeric factor, the verdict and α spent in the summary."""
    spec = results.spec
    rows = results.arm_records()
    numbers: dict[str, Any] = {"alpha_spent": results.alpha_spent, "n_looks": len(results.looks),
                               "n_trials": len(results.trials)}  # "looks": the table
    for row in rows:
        numbers |= {f"{row['arm']}/{spec.metric}/{name}": row[key] for name, key in (
            ("mean", spec.metric), ("ci_low", f"{spec.metric}_low"),
            ("ci_high", f"{spec.metric}_high"), ("delta", "delta"), ("failed", "failed"))}
    if spec.hypothesis is not None:
        numbers |= {"hypothesis": spec.hypothesis.claim, "verdict": results.verdict}
    lines = []
    for factor in spec.factors:
        if rows and isinstance(rows[0][factor], float):  # a numeric factor: an axis
            others = [f for f in spec.factors if f != factor]
            lines.append(("arms", factor, spec.metric, others[0] if others else None))
    looks = [{"look": i + 1, "seeds": look.seeds, "alpha": look.alpha}
             for i, look in enumerate(results.looks)]
    return StudySummary(results.study, spec.description,
                        {"spec": spec.to_dict(), "preset": results.preset},
                        {"arms": rows, "checks": results.check_records(), "looks": looks},
                        numbers, files, bar=("arms", "arm", spec.metric), lines=lines, step=step)
