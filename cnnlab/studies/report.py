"""Ablation reports from the storage: per-arm intervals, paired Δ with Holm-adjusted p-values,
the mechanism metrics, the hypothesis's verdict, and plots (statistics: ``comparisons``).

Writes ``report.md``, ``results.csv`` and PNG plots; every file is written atomically.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from cnnlab.files import claim_study_folder, write_owned
from cnnlab.images import figure_png
from cnnlab.studies.comparisons import ALPHA, Comparison, Interval, Pair, compare
from cnnlab.studies.spec import MECHANISMS, METRICS, AblationSpec, Expectation
from cnnlab.studies.trials import ARM, KEY, LEGACY_HISTORY, NOTE, RESULT_KEYS, SEED, reason_of
from cnnlab.tracking import StudySummary

SEEDS_ATTR = "looks"  # study attribute: most rounds of seeds any run of it planned


@dataclass(frozen=True)
class ArmRow:
    arm: str
    levels: dict[str, str]
    values: dict[int, float]  # seed → primary metric (finished, not diverged)
    interval: Interval
    diverged: int
    delta: Comparison | None  # paired vs baseline, None for the baseline itself


@dataclass(frozen=True)
class Verdict:
    """The spec's hypothesis answered: one outcome per expectation, and overall."""

    claim: str
    checks: list[tuple[Expectation, Comparison, str]]  # outcome: as expected | against | undecided
    verdict: str  # supported | not supported | undecided


@dataclass(frozen=True)
class Report:
    spec: AblationSpec
    study: str
    trials: list[dict[str, Any]]  # one per finished arm × seed
    rows: list[ArmRow]
    failed: list[str]
    preset: str
    running: list[str]  # arm × seed trials another worker was still running
    alpha: float  # per comparison family: 0.05, divided by the rounds of seeds when adaptive
    mechanisms: dict[str, list[tuple[str, Interval, Comparison | None]]]  # metric → per arm
    verdict: Verdict | None

    def values(self, arm: str, metric: str) -> dict[int, float]:
        return seed_values(self.trials, arm, metric)

    @property
    def undecided(self) -> list[Comparison]:
        """The comparisons adding seeds could decide: primary vs baseline, and the hypothesis."""
        checks = [] if self.verdict is None else [c for _, c, _ in self.verdict.checks]
        return [c for c in [r.delta for r in self.rows if r.delta] + checks if not c.decided]


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


DIVERGED = "diverged"  # how a diverged trial's reason starts


def seed_values(trials: list[dict[str, Any]], arm: str, metric: str) -> dict[int, float]:
    """Seed → ``metric`` of ``arm``'s finished, non-diverged trials."""
    return {t["seed"]: t[metric] for t in trials
            if t["arm"] == arm and not t["diverged"] and t.get(metric) is not None}


def _trial_row(t: optuna.trial.FrozenTrial, diverged: bool) -> dict[str, Any]:
    arm, seed = arm_seed(t.user_attrs, t.params)
    row: dict[str, Any] = {"arm": arm, "seed": seed, "diverged": diverged}
    row.update({name: t.user_attrs[name] for name in RESULT_KEYS if name in t.user_attrs})
    if "epochs" in row and "epochs_to_target" in row and row["epochs_to_target"] is None:
        row["epochs_to_target"] = row["epochs"] + 1  # never reached: a lower bound (censored)
    row["curve"] = val_curve(t)
    return row


def _shown(report_trials: list[dict[str, Any]], spec: AblationSpec) -> list[str]:
    """The spec's ``metrics:``, or the mechanism metrics that differ between arms."""
    if spec.metrics:
        return [m for m in spec.metrics if m != spec.metric]
    shown = []
    for metric in MECHANISMS:
        values = {round(t[metric], 12) for t in report_trials if t.get(metric) is not None}
        if len(values) > 1:
            shown.append(metric)
    return shown


def _verdict(spec: AblationSpec, report: Report) -> Verdict | None:
    if spec.hypothesis is None:
        return None
    expect = spec.hypothesis.expect
    pairs = [Pair(e.arm, e.than, e.metric, report.values(e.arm, e.metric),
                  report.values(e.than, e.metric)) for e in expect]
    comparisons = compare(pairs, BOUNDS, report.alpha, {spec.metric: spec.margin})
    checks = []
    for e, c in zip(expect, comparisons, strict=True):
        outcome = ("as expected" if c.sign == e.sign
                   else "against" if c.sign == -e.sign or c.equivalent else "undecided")
        checks.append((e, c, outcome))
    outcomes = {o for _, _, o in checks}
    verdict = ("not supported" if "against" in outcomes
               else "supported" if outcomes == {"as expected"} else "undecided")
    return Verdict(spec.hypothesis.claim, checks, verdict)


BOUNDS = {name: m.bounds for name, m in METRICS.items()}


def collect(study: optuna.Study) -> Report:
    """Finished trials (one per arm × seed), per-arm statistics, comparisons and the verdict."""
    spec = AblationSpec.from_dict(study.user_attrs["spec"])
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
        reason = reason_of(t) or ""
        diverged = reason.startswith(DIVERGED)
        if key not in trials and (t.state == TrialState.COMPLETE or diverged):
            trials[key] = _trial_row(t, diverged)
        if t.state in (TrialState.FAIL, TrialState.PRUNED) and NOTE not in t.user_attrs and reason:
            problems.append((key, f"{key}: {reason}"))  # none: a killed worker's, redone
    done = sorted(trials.values(), key=lambda r: (list(arms).index(r["arm"]), r["seed"]))
    alpha = ALPHA / study.user_attrs.get(SEEDS_ATTR, 1)
    present = [name for name in arms if any(t["arm"] == name for t in done)]
    others = [name for name in present if name != spec.baseline]

    def family(metric: str, margin: float = 0.0) -> dict[str, Comparison]:
        pairs = [Pair(name, spec.baseline, metric, seed_values(done, name, metric),
                      seed_values(done, spec.baseline, metric)) for name in others]
        return {c.arm: c for c in compare(pairs, BOUNDS, alpha, {metric: margin})}

    def interval(name: str, metric: str) -> Interval:
        return Interval.of(list(seed_values(done, name, metric).values()), BOUNDS[metric], alpha)

    primary = family(spec.metric, spec.margin)
    rows = [ArmRow(name, arms[name].levels, seed_values(done, name, spec.metric),
                   interval(name, spec.metric), sum(t["diverged"] for t in done if t["arm"] == name),
                   primary.get(name)) for name in present]
    mechanisms = {metric: [(name, interval(name, metric), deltas.get(name)) for name in present]
                  for metric in _shown(done, spec) for deltas in [family(metric)]}
    failed = [line for key, line in problems if key not in trials or trials[key]["diverged"]]
    report = Report(spec, study.study_name, done, rows, failed, study.user_attrs["spec"]["preset"],
                    sorted(set(running) - set(trials)), alpha, mechanisms, None)
    return dataclasses.replace(report, verdict=_verdict(spec, report))


def results_csv(report: Report) -> str:
    factors = list(report.spec.factors)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["arm", "seed", *factors, "diverged", *RESULT_KEYS])
    levels = {arm.name: arm.levels for arm in report.spec.arms}
    for t in report.trials:
        writer.writerow([t["arm"], t["seed"], *(levels[t["arm"]][f] for f in factors),
                         t["diverged"], *(t.get(k, "") for k in RESULT_KEYS)])
    return buffer.getvalue()


def _p(p: float) -> str:
    return "–" if math.isnan(p) else f"{p:.3g}"


def _decision(c: Comparison) -> str:
    return ("higher" if c.sign > 0 else "lower" if c.sign < 0
            else "equivalent" if c.equivalent else "undecided")


def table_rows(report: Report) -> list[list[str]]:
    """Header + one row per arm: seeds, diverged, mean [CI], paired Δ [CI], p, Holm p, decision."""
    level = f"{1 - report.alpha:.1%}".replace(".0%", "%")
    rows = [["arm", "seeds", "diverged", f"{report.spec.metric} (mean [{level} CI])",
             f"Δ vs baseline (paired, [{level} CI])", "p", "p (Holm)", "decision"]]
    for r in report.rows:
        if r.delta is None:
            cells = ["baseline", "", "", ""]
        elif not r.delta.delta.n:
            cells = ["no common seeds", "–", "–", "undecided"]
        else:
            cells = [r.delta.delta.text(signed=True), _p(r.delta.p), _p(r.delta.p_holm),
                     _decision(r.delta)]
        rows.append([r.arm, str(r.interval.n), str(r.diverged), r.interval.text(), *cells])
    return rows


def mechanism_rows(report: Report) -> list[list[str]]:
    """Header + one row per arm: each shown metric's mean [CI] and its Δ's Holm p."""
    metrics = list(report.mechanisms)
    rows = [["arm", *metrics]]
    for i, row in enumerate(report.rows):
        cells = []
        for metric in metrics:
            _, interval, delta = report.mechanisms[metric][i]
            mark = "" if delta is None or not delta.delta.n else (
                f" (Δ {delta.delta.mean:+.4g}, p_Holm {_p(delta.p_holm)}"
                f"{', ' + _decision(delta) if delta.significant else ''})")
            cells.append(f"{interval.text()}{mark}")
        rows.append([row.arm, *cells])
    return rows


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def _errors(intervals: list[Interval]) -> np.ndarray:
    """Asymmetric error bars (below, above the mean); zero where no interval exists."""
    return np.array([[0.0, 0.0] if math.isnan(i.low) else [i.mean - i.low, i.high - i.mean]
                     for i in intervals]).T


def _strip(ax: Any, report: Report, metric: str) -> None:
    """Each seed as a dot over its arm (diverged seeds as red crosses at their value)."""
    rng = np.random.default_rng(0)
    for x, row in enumerate(report.rows):
        for t in (t for t in report.trials if t["arm"] == row.arm and t.get(metric) is not None):
            jitter = x + rng.uniform(-0.18, 0.18)
            if t["diverged"]:
                ax.plot(jitter, t[metric], "x", color="tab:red", markersize=7, zorder=3)
            else:
                ax.plot(jitter, t[metric], "o", color="black", markersize=3.5, zorder=3)


def _per_arm(ax: Any, report: Report, metric: str, intervals: list[Interval]) -> None:
    """Mean (diamond) with its interval per arm, seeds as dots; baseline orange."""
    names = [r.arm for r in report.rows]
    errors = _errors(intervals)
    for x, (name, interval) in enumerate(zip(names, intervals, strict=True)):
        color = "tab:orange" if name == report.spec.baseline else "tab:blue"
        ax.errorbar([x], [interval.mean], yerr=errors[:, x : x + 1], fmt="D", color=color,
                    markersize=8, capsize=6, elinewidth=2, zorder=2)
    _strip(ax, report, metric)
    ax.grid(axis="y", alpha=0.3)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    values = [t[metric] for t in report.trials if t.get(metric) is not None]
    values += [v for i in intervals for v in (i.low, i.high) if not math.isnan(v)]
    low, high = min(values), max(values)
    pad = 0.1 * (high - low) + 1e-3
    bounds = METRICS[metric].bounds
    ax.set_ylim(max(low - pad, bounds[0]), min(high + pad, bounds[1] + pad))


def plots(report: Report) -> dict[str, bytes]:
    """PNG bytes by file name: per-seed bars, Δ forest, mechanisms, curves, metric vs factor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, out = report.spec.metric, {}
    level = f"{1 - report.alpha:.1%}".replace(".0%", "%")
    names = [r.arm for r in report.rows]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 4.5))
    _per_arm(ax, report, metric, [r.interval for r in report.rows])
    ax.set_ylabel(f"{metric} (mean, {level} CI, seeds)")
    ax.set_title(f"{report.study}: ◆ mean, dots = seeds, × = diverged, baseline orange",
                 fontsize=10)
    fig.tight_layout()
    out["bars.png"] = figure_png(fig)

    deltas = [r for r in report.rows if r.delta is not None and r.delta.delta.n]
    if deltas:
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(deltas) + 1.6))
        for y, r in enumerate(deltas):
            c = r.delta
            color = "tab:green" if c.sign > 0 else "tab:red" if c.sign < 0 else "tab:gray"
            err = _errors([c.delta])
            ax.errorbar([c.delta.mean], [y], xerr=err, fmt="o", color=color, capsize=4)
            ax.annotate(f"p_Holm {_p(c.p_holm)}", (c.delta.mean, y), xytext=(0, 7),
                        textcoords="offset points", ha="center", fontsize=7)
        ax.axvline(0, color="black", linewidth=1)
        ax.set_yticks(range(len(deltas)), [r.arm for r in deltas], fontsize=8)
        ax.set_ylim(-0.7, len(deltas) - 0.3)
        ax.invert_yaxis()
        ax.set_xlabel(f"Δ {metric} vs {report.spec.baseline} (paired, {level} CI)")
        ax.set_title(f"{report.study}: green/red = significant after Holm", fontsize=10)
        fig.tight_layout()
        out["forest.png"] = figure_png(fig)

    if report.mechanisms:
        shown = list(report.mechanisms)
        cols = min(3, len(shown))
        rows = math.ceil(len(shown) / cols)
        width = max(4.0, 0.55 * len(names) + 1.5)
        fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 4.2 * rows), squeeze=False)
        for ax, name in zip(axes.flat, shown, strict=False):
            _per_arm(ax, report, name, [i for _, i, _ in report.mechanisms[name]])
            ax.set_title(name, fontsize=10)
        for ax in list(axes.flat)[len(shown):]:
            ax.set_visible(False)
        fig.suptitle(f"{report.study}: mechanism metrics (mean, {level} CI, seeds)", fontsize=10)
        fig.tight_layout()
        out["mechanisms.png"] = figure_png(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in names:
        curves = [t["curve"] for t in report.trials if t["arm"] == name and t["curve"]
                  and not t["diverged"]]
        length = min((len(c) for c in curves), default=0)
        if length:
            acc = np.array([c[:length] for c in curves])
            ax.plot(range(1, length + 1), np.nanmean(acc, axis=0), label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (mean over seeds)")
    if ax.get_lines():
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
        for lv in report.spec.factors[group]:
            rows = sorted((r for r in report.rows if r.levels[group] == lv),
                          key=lambda r: x_of[r.arm])
            ax.errorbar([x_of[r.arm] for r in rows], [r.interval.mean for r in rows],
                        yerr=_errors([r.interval for r in rows]), marker="o", capsize=3,
                        label=f"{group}={lv}")
        ax.set_xscale("log", base=2 if all(x.is_integer() for x in x_of.values()) else 10)
        ax.set_xlabel(x_factor)
        ax.set_ylabel(f"{metric} (mean, {level} CI)")
        ax.legend(fontsize=8)
        ax.set_title(f"{report.study}: {metric} vs {x_factor}")
        out[f"by_{x_factor.replace('.', '_')}.png"] = figure_png(fig)
    return out


def _verdict_lines(report: Report) -> list[str]:
    v = report.verdict
    if v is None:
        return []
    spec, quick = report.spec, report.preset == "quick"
    arm = next(a for a in spec.arms if a.name == spec.baseline)
    data = spec.config(arm, 0, quick).data.name
    counts = [r.interval.n + r.diverged for r in report.rows]
    seeds = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}–{max(counts)}"
    lines = ["## Hypothesis", "", f"> {v.claim}", "",
             f"**Verdict: {v.verdict}** (on `{data}`, {report.preset} preset, {seeds} seeds per "
             "arm).", ""]
    if v.verdict != "supported":
        lines += [f"The data of this study do not show the claim. That is a finding about "
                  f"`{data}` and this preset, not a proof against the claim: more seeds "
                  "(`--seeds auto`), the full preset or harder data (MNIST, Fashion-MNIST or "
                  "CIFAR-10 from files: `data.name=... data.root=...`) may show it.", ""]
    lines += ["| expectation | Δ (paired) | pairs | p | p (Holm) | outcome |",
              "|---|---|---|---|---|---|"]
    for e, c, outcome in v.checks:
        lines.append(f"| {e.text()} | {c.delta.text(signed=True)} | {c.delta.n} | {_p(c.p)} | "
                     f"{_p(c.p_holm)} | {outcome} |")
    lines += ["", "Supported: every expectation significant in its direction (Holm across the "
              "expectations); not supported: one significant the other way, or equivalent within "
              f"±{report.spec.margin} on {report.spec.metric}; otherwise undecided — more seeds "
              "(`--seeds auto`) or a longer preset may decide it.", ""]
    return lines


def markdown(report: Report, images: list[str]) -> str:
    spec = report.spec
    seeds = sorted({t["seed"] for t in report.trials})
    level = f"{1 - report.alpha:.1%}".replace(".0%", "%")
    lines = [f"# Ablation: {report.study}", ""]
    if spec.description:
        lines += [spec.description, ""]
    lines += [
        f"- metric: `{spec.metric}` ({spec.direction}); baseline: `{spec.baseline}`",
        f"- {len(report.trials)} finished trials over {len(report.rows)} arms; seeds {seeds}",
        f"- base overrides: `{' '.join(spec.overrides) or 'none'}`"
        + (f"; from the command line: `{' '.join(spec.extra)}`" if spec.extra else ""),
        f"- preset: {report.preset}" + (f" (`{' '.join(spec.quick)}`)" if report.preset == "quick"
                                        else ""),
        "",
        *_verdict_lines(report),
        "## Arms", "",
        _markdown_table(table_rows(report)),
        "",
        f"Intervals: {level} Student-t over seeds, clipped to the metric's range (a clipped "
        "interval still covers the true mean as often). Δ pairs each seed with the baseline's run "
        "of the same seed (same split, same initialisation); p is a paired t-test, adjusted with "
        f"Holm's method across the {sum(r.delta is not None for r in report.rows)} comparisons; "
        f"the decision is higher / lower when the adjusted p < {report.alpha:.3g}, equivalent "
        f"when both one-sided tests put Δ within ±{spec.margin} (TOST), undecided otherwise. "
        "The Δ intervals are per comparison, so one can exclude zero and still be undecided "
        "after the adjustment. Diverged seeds are counted apart and left out of the statistics.",
        "",
    ]
    if report.alpha < ALPHA:
        lines += [f"Seeds were added in rounds until decided (at most {round(ALPHA / report.alpha)}"
                  f" looks), so each look tests at α = 0.05 / looks = {report.alpha:.3g} "
                  "(Bonferroni over looks keeps the error rate of the whole sequence at 5%).", ""]
    if report.mechanisms:
        lines += ["## Mechanisms", "", _markdown_table(mechanism_rows(report)), "",
                  *[f"- `{m}`: {METRICS[m].meaning}" for m in report.mechanisms],
                  "", "Δ vs the baseline, paired by seed; p Holm-adjusted across the arms, per "
                  "metric.", ""]
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


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def arm_records(report: Report) -> list[dict[str, Any]]:
    """One numeric row per arm (W&B's table): levels, n, diverged, mean and CI, Δ, p, decision."""
    rows = []
    for r in report.rows:
        row: dict[str, Any] = {"arm": r.arm, **r.levels, "n": r.interval.n,
                               "diverged": r.diverged, "mean": _number(r.interval.mean),
                               "ci_low": _number(r.interval.low),
                               "ci_high": _number(r.interval.high)}
        c = r.delta
        row |= {"delta": None if c is None else _number(c.delta.mean),
                "delta_low": None if c is None else _number(c.delta.low),
                "delta_high": None if c is None else _number(c.delta.high),
                "p": None if c is None else _number(c.p),
                "p_holm": None if c is None else _number(c.p_holm),
                "significant": c is not None and c.significant,
                "decision": "baseline" if c is None else _decision(c)}
        for metric, cells in report.mechanisms.items():
            row[metric] = next(_number(i.mean) for name, i, _ in cells if name == r.arm)
        rows.append(row)
    return rows


def study_summary(report: Report, files: list[Path], step: int) -> StudySummary:
    """The study's W&B summary run: the arms table, a bar chart of the means, the metric against
    a numeric factor, per-arm numbers and the verdict in the summary, the report as artifact."""
    spec = report.spec
    rows = arm_records(report)
    numbers: dict[str, Any] = {"alpha": report.alpha, "trials": len(report.trials)}
    for row in rows:
        numbers |= {f"{row['arm']}/{spec.metric}/{k}": row[k]
                    for k in ("mean", "ci_low", "ci_high", "delta", "p_holm")}
    if report.verdict is not None:
        numbers |= {"hypothesis": report.verdict.claim, "verdict": report.verdict.verdict}
    lines = []
    for factor in spec.factors:
        try:
            [float(level) for level in spec.factors[factor]]
        except ValueError:
            continue
        others = [f for f in spec.factors if f != factor]
        for row in rows:
            row[f"{factor} (number)"] = float(row[factor])
        lines.append(("arms", f"{factor} (number)", "mean", others[0] if others else None))
    return StudySummary(report.study, spec.description, {"spec": spec.to_dict(),
                                                         "preset": report.preset},
                        {"arms": rows}, numbers, files, bar=("arms", "arm", "mean"), lines=lines,
                        step=step)


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
