"""Ablation reports from the storage: mean ± 95% CI per arm, paired deltas vs the baseline, plots.

Writes ``report.md``, ``results.csv`` and PNG plots; every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState
from scipy import stats

from cnnlab.files import claim_study_folder, write_owned
from cnnlab.images import figure_png
from cnnlab.studies.spec import AblationSpec
from cnnlab.studies.trials import ARM, KEY, LEGACY_HISTORY, NOTE, RESULT_KEYS, SEED, reason_of


@dataclass(frozen=True)
class Interval:
    """A mean with its 95% t-interval half-width (nan with fewer than two values)."""

    mean: float
    half: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Interval:
        n = len(values)
        if n == 0:
            return cls(math.nan, math.nan, 0)
        mean = float(np.mean(values))
        if n < 2:
            return cls(mean, math.nan, n)
        half = float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
        return cls(mean, half, n)

    @property
    def significant(self) -> bool:
        """The interval excludes zero (for a paired difference)."""
        return self.n >= 2 and abs(self.mean) > self.half

    def text(self, signed: bool = False) -> str:
        mean = f"{self.mean:+.4f}" if signed else f"{self.mean:.4f}"
        return mean if math.isnan(self.half) else f"{mean} ± {self.half:.4f}"


@dataclass(frozen=True)
class ArmRow:
    arm: str
    levels: dict[str, str]
    values: dict[int, float]  # seed → metric
    interval: Interval
    delta: Interval | None  # paired vs baseline, None for the baseline itself


@dataclass(frozen=True)
class Report:
    spec: AblationSpec
    study: str
    trials: list[dict[str, Any]]  # one per finished arm × seed
    rows: list[ArmRow]
    failed: list[str]
    preset: str
    running: list[str]  # arm × seed trials another worker was still running



def arm_seed(attrs: dict[str, Any], params: dict[str, Any]) -> tuple[str, int]:
    """A trial's arm and seed (user attributes; studies of cnnlab 0.1 kept them as parameters)."""
    if ARM in attrs:
        return attrs[ARM], attrs[SEED]
    return params["arm"], params["seed"]


def val_curve(trial: optuna.trial.FrozenTrial) -> list[float]:
    """Validation accuracy per epoch: the intermediate values (cnnlab 0.1: a ``history`` attr)."""
    if trial.intermediate_values:
        return [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)]
    return [row.get("val/acc", math.nan) for row in trial.user_attrs.get(LEGACY_HISTORY, [])]


def collect(study: optuna.Study) -> Report:
    """Finished trials (one per arm × seed) and the per-arm statistics."""
    spec = AblationSpec.from_dict({**study.user_attrs["spec"], "seeds": 0})
    arms = {arm.name: arm for arm in spec.arms}
    trials: dict[str, dict[str, Any]] = {}
    problems: list[tuple[str, str]] = []
    running: list[str] = []
    for t in study.get_trials(deepcopy=False):
        key = t.user_attrs.get(KEY)
        if key is None:
            continue
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            running.append(key)
        if t.state == TrialState.COMPLETE and key not in trials:
            arm, seed = arm_seed(t.user_attrs, t.params)
            row = {"arm": arm, "seed": seed}
            row.update({name: t.user_attrs[name] for name in RESULT_KEYS if name in t.user_attrs})
            row["curve"] = val_curve(t)
            trials[key] = row
        elif t.state in (TrialState.FAIL, TrialState.PRUNED) and NOTE not in t.user_attrs:
            reason = reason_of(t)
            if reason:  # none: a killed worker's trial, redone by the rerun
                problems.append((key, f"{key}: {reason}"))
    done = sorted(trials.values(), key=lambda r: (list(arms).index(r["arm"]), r["seed"]))
    by_arm = {name: {r["seed"]: r[spec.metric] for r in done if r["arm"] == name} for name in arms}
    base = by_arm.get(spec.baseline, {})
    rows = []
    for name, values in by_arm.items():
        if not values:
            continue
        common = sorted(set(values) & set(base))
        delta = None if name == spec.baseline else Interval.of([values[s] - base[s] for s in common])
        rows.append(ArmRow(name, arms[name].levels, values, Interval.of(list(values.values())), delta))
    failed = [line for key, line in problems if key not in trials]  # a rerun may have fixed it
    return Report(spec, study.study_name, done, rows, failed, study.user_attrs["spec"]["preset"],
                  sorted(set(running) - set(trials)))


def results_csv(report: Report) -> str:
    factors = list(report.spec.factors)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["arm", "seed", *factors, *RESULT_KEYS])
    levels = {row.arm: row.levels for row in report.rows}
    for t in report.trials:
        writer.writerow([t["arm"], t["seed"], *(levels[t["arm"]][f] for f in factors),
                         *(t.get(k, "") for k in RESULT_KEYS)])
    return buffer.getvalue()


def table_rows(report: Report) -> list[list[str]]:
    """Header + one row per arm: arm, seeds, mean ± CI, paired delta ± CI, significant."""
    rows = [["arm", "seeds", f"{report.spec.metric} (mean ± 95% CI)",
             "Δ vs baseline (paired, 95% CI)", "significant"]]
    for r in report.rows:
        if r.delta is None:
            delta, sig = "baseline", ""
        else:
            delta = r.delta.text(signed=True) if r.delta.n else "no common seeds"
            sig = "yes" if r.delta.significant else "no"
        rows.append([r.arm, str(r.interval.n), r.interval.text(), delta, sig])
    return rows


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def plots(report: Report) -> dict[str, bytes]:
    """PNG bytes by file name: bars, learning curves, and metric vs a numeric factor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, out = report.spec.metric, {}
    names = [r.arm for r in report.rows]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 4))
    means = [r.interval.mean for r in report.rows]
    errors = [0 if math.isnan(r.interval.half) else r.interval.half for r in report.rows]
    colors = ["tab:orange" if n == report.spec.baseline else "tab:blue" for n in names]
    ax.bar(range(len(names)), means, yerr=errors, capsize=4, color=colors)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    low = min(m - e for m, e in zip(means, errors, strict=True))
    high = max(m + e for m, e in zip(means, errors, strict=True))
    pad = 0.15 * (high - low + 1e-3)
    low, high = low - pad, high + pad
    if metric.endswith("_acc"):
        low, high = max(low, 0.0), min(high, 1.0)
    ax.set_ylim(low, high)
    ax.set_ylabel(f"{metric} (mean ± 95% CI)")
    ax.set_title(f"{report.study}: baseline in orange")
    out["bars.png"] = figure_png(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in names:
        curves = [t["curve"] for t in report.trials if t["arm"] == name and t["curve"]]
        length = min((len(c) for c in curves), default=0)
        if length:
            acc = np.array([c[:length] for c in curves])
            ax.plot(range(1, length + 1), np.nanmean(acc, axis=0), label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (mean over seeds)")
    ax.legend(fontsize=7)
    ax.set_title(f"{report.study}: learning curves")
    out["curves.png"] = figure_png(fig)

    factors = list(report.spec.factors)
    for x_factor in factors if len(factors) == 2 else []:
        try:
            x_of = {r.arm: float(r.levels[x_factor]) for r in report.rows}
        except ValueError:
            continue
        (group,) = [f for f in factors if f != x_factor]
        fig, ax = plt.subplots(figsize=(7, 4))
        for level in report.spec.factors[group]:
            rows = sorted((r for r in report.rows if r.levels[group] == level),
                          key=lambda r: x_of[r.arm])
            ax.errorbar([x_of[r.arm] for r in rows], [r.interval.mean for r in rows],
                        yerr=[0 if math.isnan(r.interval.half) else r.interval.half for r in rows],
                        marker="o", capsize=3, label=f"{group}={level}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(x_factor)
        ax.set_ylabel(f"{metric} (mean ± 95% CI)")
        ax.legend(fontsize=8)
        ax.set_title(f"{report.study}: {metric} vs {x_factor}")
        out[f"by_{x_factor.replace('.', '_')}.png"] = figure_png(fig)
    return out


def markdown(report: Report, images: list[str]) -> str:
    spec = report.spec
    seeds = sorted({t["seed"] for t in report.trials})
    lines = [f"# Ablation: {report.study}", ""]
    if spec.description:
        lines += [spec.description, ""]
    lines += [
        f"- metric: `{spec.metric}` ({spec.direction}); baseline: `{spec.baseline}`",
        f"- {len(report.trials)} finished trials over {len(report.rows)} arms; seeds {seeds}",
        f"- base overrides: `{' '.join(spec.overrides) or 'none'}`",
        f"- preset: {report.preset}" + (f" (`{' '.join(spec.quick)}`)" if report.preset == "quick"
                                        else ""),
        "",
        _markdown_table(table_rows(report)),
        "",
        "Mean ± half-width of the 95% t-interval over seeds. Δ pairs each seed with the "
        "baseline's run of the same seed (same data split, same initialisation seed) and is "
        "significant when its 95% interval excludes zero.",
        "",
    ]
    if report.running:
        lines += ["## Incomplete", "",
                  f"{len(report.running)} trials were still running or queued when this report was "
                  "written (another worker, or an interrupted run); the arms below have fewer seeds "
                  "than the spec asks. Rerun `cnnlab ablate` (or `cnnlab report`) when they finish.",
                  "", *[f"- {key}" for key in report.running], ""]
    if report.failed:
        lines += ["## Failed or diverged trials", "", *[f"- {f}" for f in report.failed], ""]
    lines += [f"![{name}]({name})" for name in images]
    return "\n".join(lines) + "\n"


def write_report(study: optuna.Study, out: Path) -> Report:
    """Build the report from the storage and write it under ``out``."""
    report = collect(study)
    images = plots(report) if report.rows else {}
    claim_study_folder(out)
    for name, png in images.items():
        write_owned(out, name, png)
    write_owned(out, "results.csv", results_csv(report))
    write_owned(out, "report.md", markdown(report, list(images)))
    return report
