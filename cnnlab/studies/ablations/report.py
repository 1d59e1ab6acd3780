"""An ablation's report, rendered from its ``Results``: ``report.md``, ``results.csv`` and the
figures (``plots``), each written atomically into the study folder. Tables here are shared with
the console, so both give the same numbers and intervals.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from cnnlab.metrics import FAILURE, FAILURES, METRICS, RESULT_KEYS
from cnnlab.outputs.files import claim_study_folder, write_owned
from cnnlab.studies.ablations.plots import plots
from cnnlab.studies.ablations.results import Check, Results
from cnnlab.studies.ablations.rows import TrialRow
from cnnlab.studies.statistics.power import POWER


def p_text(p: float) -> str:
    return "–" if math.isnan(p) else f"{p:.3g}"


def _failures(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    return "0" if not total else f"{total} (" + ", ".join(
        f"{n} {kind}" for kind, n in counts.items() if n) + ")"


def arm_rows(results: Results) -> list[list[str]]:
    """Header + one row per arm (exploratory): seeds, failures, ITT and success-only means,
    Δ vs the baseline with its unadjusted p, and the failure-rate test."""
    metric = results.spec.metric
    rows = [["arm", "seeds", "failed", f"{metric} every run [95% CI]", "runs that did not fail",
             "Δ vs baseline [95% CI]", "p (unadjusted)", "failure rate p"]]
    for a in results.arms:
        delta = ["baseline", "", ""] if a.delta is None else (
            ["no common seeds", "–"] if not a.delta.delta.n
            else [a.delta.delta.text(signed=True), f"{p_text(a.delta.p)} ({a.delta.test})"])
        rows.append([a.arm, str(a.seeds), _failures(a.failures), a.itt.text(), a.success.text(),
                     *delta[:2], "" if a.delta is None else p_text(a.failure_p)])
    return rows


def _power_text(check: Check) -> str:
    """An undecided comparison's power statement, in the units of its metric."""
    power = check.power
    if power is None:
        return ""
    if power.test == "Boschloo":
        found = ("failing always against never" if math.isfinite(power.detectable)
                 else "not even failing always against never")
    else:
        among = " among runs that trained" if power.test == "two-part test" else ""
        low, high = METRICS[check.comparison.metric].bounds
        found = ("no effect within the metric's range" if power.detectable > high - low
                 else f"|Δ| ≥ {power.detectable:.4g}{among}")
    has = check.comparison.delta.n
    needed = ("no difference observed to size" if not check.comparison.delta.mean
              else "more than 200 seeds for the observed |Δ|" if power.needed is None
              else f"its {has} seeds detect the observed |Δ| with {POWER:.0%} power; this draw "
                   "did not" if power.needed <= has
              else f"{power.needed} seeds for the observed |Δ| (it has {has})")
    return (f"{found} ({power.test}, {POWER:.0%} power at α {power.alpha:.3g}); {needed}")


def check_rows(results: Results) -> list[list[str]]:
    """Header + one row per confirmatory comparison: Δ, pairs, p, Holm p at its look's α, the
    look that decided it, the outcome, and for the undecided what they could have detected."""
    rows = [["expectation", "Δ (paired, every run) [CI at 1 − α]", "pairs", "p", "p (Holm)",
             "α (look)", "outcome", "equivalence [1 − 2α] (p TOST, Holm)",
             "could detect (undecided)"]]
    for check in results.checks:
        c = check.comparison
        look = f"{c.alpha:.3g} ({c.look + 1 if c.decided else len(results.looks)})"
        failed = f", {c.failed_pairs} with a failure" if c.failed_pairs else ""
        rows.append([check.label, c.delta.text(signed=True), f"{c.delta.n}{failed}", p_text(c.p),
                     p_text(c.p_adj), look, check.outcome,
                     "" if c.equivalence is None else
                     f"{c.equivalence.text(signed=True)} ({p_text(c.p_tost)})",
                     _power_text(check)])
    return rows


def look_rows(results: Results) -> list[list[str]]:
    """Header + one row per look: its seeds, the α it spent, the α spent so far; and what the
    plan allows by then, only where some look differs from it (else the column repeats the
    one before it)."""
    rows = [["look", "seeds per arm", "α spent", "α spent in all"]]
    total, allows = 0.0, []
    for i, look in enumerate(results.looks):
        total += look.alpha
        allows.append(f"{results.plan.spent(look.seeds):.4g}")
        rows.append([str(i + 1), str(look.seeds), f"{look.alpha:.4g}", f"{total:.4g}"])
    if any(row[3] != plan for row, plan in zip(rows[1:], allows, strict=True)):
        rows = [[*row, plan] for row, plan in zip(rows, ["plan allows", *allows], strict=True)]
    return rows


def mechanism_rows(results: Results) -> list[list[str]]:
    """Header + one row per arm: each shown metric's mean [95% CI] and its Δ's unadjusted p; a
    censored metric says how many seeds never reached the target (its value is their bound,
    not a measurement: "7.0000 (every seed equal)" read as seven epochs)."""
    metrics = list(results.mechanisms)
    rows = [["arm", *metrics]]
    for i, arm in enumerate(results.arms):
        cells = []
        runs = [r for r in results.trials if r.arm == arm.arm]
        for metric in metrics:
            _, interval, delta = results.mechanisms[metric][i]
            mark = "" if delta is None or not delta.delta.n else (
                f" (Δ {delta.delta.mean:+.4g}, p {p_text(delta.p)})")
            never = sum(r.censored for r in runs) if METRICS[metric].failure == "censored" else 0
            if runs and never == len(runs):
                cells.append(f"never reached (every seed; > {interval.mean - 1:.0f} epochs)")
                continue
            note = f"; {never} of {len(runs)} never reached, counted at the bound" if never else ""
            cells.append(f"{interval.text()}{mark}{note}")
        rows.append([arm.arm, *cells])
    return rows


def console_lines(results: Results) -> list[str]:
    """What the console prints of a study: one line per arm and per confirmatory comparison
    (the report's numbers and intervals; lines wrap at any width, tables would not)."""
    metric = results.spec.metric
    lines = [f"{results.study}: arms (exploratory; {metric} over every run, 95% CI)"]
    for a in results.arms:
        failed = sum(a.failures.values())
        delta = "" if a.delta is None or not a.delta.delta.n else (
            f" · Δ {a.delta.delta.text(signed=True)}, p {p_text(a.delta.p)} ({a.delta.test})")
        lines.append(f"  {a.arm}: {a.itt.text()} ({a.seeds} seeds"
                     f"{f', {_failures(a.failures)} failed' if failed else ''}){delta}")
    lines.append(f"{results.study}: confirmatory ({len(results.looks)} look"
                 f"{'s' if len(results.looks) > 1 else ''}, α spent "
                 f"{results.alpha_spent:.3g} of {results.plan.alpha:g})")
    for check in results.checks:
        c = check.comparison
        what = check.label
        power = _power_text(check)
        lines.append(f"  {MARKS.get(check.outcome, '?')} {what}: Δ {c.delta.text(signed=True)} "
                     f"(CI at 1 − α, not Holm-adjusted), {_p_line(check)} {_versus(check)} α "
                     f"{c.alpha:.3g} → {check.outcome}"
                     + (f"; could detect {power}" if power else ""))
    if results.verdict is not None and results.spec.hypothesis is not None:
        lines.append(f"hypothesis: {results.spec.hypothesis.claim} → {results.verdict}")
    return lines


# Marks of an outcome: ✓/✗ only where an expectation was met or contradicted (a ✓ beside
# "failure rate: … higher" read as a success); a decision without an expectation is its arrow.
MARKS = {"as expected": "✓", "against": "✗", "higher": "↑", "lower": "↓", "equivalent": "≈"}


def _versus(check: Check) -> str:
    """≤ where the Holm p (TOST's for an expected equivalence) met the look's α, else >."""
    c = check.comparison
    p = c.p_tost if check.expectation.direction == "equivalent" else c.p_adj
    return "≤" if p <= c.alpha else ">"


def _p_line(check: Check) -> str:
    """The Holm p that decides the expectation: TOST's for an expected equivalence."""
    c = check.comparison
    if check.expectation.direction == "equivalent":
        return f"p_TOST,Holm {p_text(c.p_tost)}"
    return f"p_Holm {p_text(c.p_adj)}"


SUMMARY_HEADER = ["study", "hypothesis (confirmatory family)", "verdict", "seeds, looks"]


def summary_row(results: Results) -> list[str]:
    """A study in one row of a table of studies: its claim, the verdict with each confirmatory
    comparison (Δ, Holm p, outcome), the most seeds an arm got and the looks taken."""
    claim = (results.spec.hypothesis.claim if results.spec.hypothesis is not None
             else "every arm against the baseline")
    checks = "; ".join(
        f"{check.label}: Δ {check.comparison.delta.text(signed=True)}, {_p_line(check)} "
        f"→ {check.outcome}" for check in results.checks)
    looks = len(results.looks)
    return [f"`{results.study}`", claim, f"**{results.verdict or 'no hypothesis'}**: {checks}",
            f"{max((a.seeds for a in results.arms), default=0)}, {looks} look{'s' * (looks != 1)}"]


def _measured(row: TrialRow, key: str) -> float | None:
    """A results.csv cell: a metric as the run measured it (never reached: its censoring
    bound, as the report counts it), or a stored count."""
    return row.measured(key) if key in METRICS else row.metrics.get(key)


def results_csv(results: Results) -> str:
    factors = list(results.spec.factors)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["arm", "seed", *factors, FAILURE, "diverged", *RESULT_KEYS])
    levels = {arm.name: arm.levels for arm in results.spec.arms}
    for r in results.trials:
        writer.writerow([r.arm, results.spec.first_seed + r.seed,
                         *(levels[r.arm][f] for f in factors), r.failure or "",
                         r.failure == "diverged", *("" if (v := _measured(r, k)) is None else v
                                                    for k in RESULT_KEYS)])
    return buffer.getvalue()


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
              for row in rows[1:]]
    return "\n".join(lines)


def _data(results: Results) -> str:
    spec = results.spec
    arm = next(a for a in spec.arms if a.name == spec.baseline)
    data = spec.config(arm, 0, results.preset == "quick").data
    return data.name if data.name == "digits" else f"{data.name} from {data.root}"


def _hypothesis(results: Results) -> list[str]:
    spec = results.spec
    counts = [a.seeds for a in results.arms]
    seeds = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}–{max(counts)}"
    if spec.hypothesis is not None:
        head = ["## Hypothesis (confirmatory)", "", f"> {spec.hypothesis.claim}", "",
                f"**Verdict: {results.verdict}** (on `{_data(results)}`, {results.preset} "
                f"preset, {seeds} seeds per arm, {len(results.looks)} look"
                f"{'s' if len(results.looks) > 1 else ''}, α spent "
                f"{results.alpha_spent:.3g} of {results.plan.alpha:g}).", ""]
    else:
        head = ["## Arms against the baseline (confirmatory)", "",
                f"On `{_data(results)}`, {results.preset} preset, {seeds} seeds per arm.", ""]
    on_primary = spec.hypothesis is not None and any(
        e.metric == spec.metric for e in spec.hypothesis.expect)
    rule = ("Supported: every expectation significant in its direction"
            + (f" (an expected equivalence: within ±{spec.margin} by TOST)" if on_primary else "")
            + "; not supported: one significant the other way"
            + (f", equivalent within ±{spec.margin} on {spec.metric} where a difference was "
               "expected, or different where equivalence was" if on_primary else "")
            + "; otherwise undecided. " if spec.hypothesis else "")
    count = len(results.checks)
    return [*head, markdown_table(check_rows(results)), "",
            f"{rule}The family is {'this comparison' if count == 1 else f'these {count} comparisons'}"
            ", Holm-adjusted within "
            "each look at the α that look spent; a comparison keeps the decision of the first "
            "look that made one. Δ pairs each seed with the reference's run of that seed, every "
            "run included (a failed run at its failure value); accuracies are compared as counts "
            "of images. The interval is at 1 − α of its look and not Holm-adjusted: the Holm p "
            "decides (an interval that excludes 0 beside a Holm p above α is undecided), "
            f"equivalence (TOST against ±{spec.margin}) at 1 − 2α. An undecided comparison "
            "states the smallest |Δ| it "
            f"would find with {POWER:.0%} power at its seeds and spread, by the test it got "
            "(paired: t, or exact sign flips on a coarse lattice; two-part where a run failed; "
            "Boschloo for failure rates) at the α it was tested at (its look's α over the "
            "comparisons tested there), and the seeds its observed |Δ| would need.", ""]


def _looks(results: Results) -> list[str]:
    plan = results.plan
    lines = ["## Looks and α spent", "", markdown_table(look_rows(results)), "",
             f"Plan: first look at {plan.first} seeds, looks up to {plan.most} seeds, "
             f"α {plan.alpha:g} spent by the Pocock-type Lan–DeMets function "
             "α·ln(1 + (e − 1)·seeds/most); each look tests at what it adds."]
    if not results.looks_stored:
        lines.append("No look was stored for this study (cnnlab ≤ 0.3, or its first round is "
                     "still running): nothing is decided, and no α is spent, until `cnnlab "
                     "ablate` finishes the round and stores its look.")
    if results.looks_stored and any(look.alpha <= 0 for look in results.looks):
        lines.append(f"A look with α 0 came after the plan's {plan.most} seeds: its seeds are "
                     "shown, but decide nothing (the plan's α was spent).")
    return [*lines, ""]


def markdown(results: Results, images: list[str]) -> str:
    spec = results.spec
    seeds = sorted({spec.first_seed + r.seed for r in results.trials})
    per_arm = sorted({a.seeds for a in results.arms})
    counts = (f"{per_arm[0]} per arm" if len(per_arm) == 1
              else f"{per_arm[0]}–{per_arm[-1]} per arm: the rounds added seeds where undecided")
    seed_text = (f"seeds {seeds[0]}–{seeds[-1]} ({counts})" if seeds == list(
        range(seeds[0], seeds[-1] + 1)) else f"seeds {seeds} ({counts})") if seeds else "no seeds"
    lines = [f"# Ablation: {results.study}", ""]
    if spec.description:
        lines += [spec.description, ""]
    lines += [
        f"- metric: `{spec.metric}` ({METRICS[spec.metric].direction}); baseline: "
        f"`{spec.baseline}`; data: `{_data(results)}`",
        f"- {len(results.trials)} finished trials over {len(results.arms)} arms; {seed_text}",
        f"- base overrides: `{' '.join(spec.overrides) or 'none'}`"
        + (f"; from the command line: `{' '.join(spec.extra)}`" if spec.extra else ""),
        f"- preset: {results.preset}" + (f" (`{' '.join(spec.quick)}`)"
                                         if results.preset == "quick" else ""),
        "",
        *_hypothesis(results),
        *_looks(results),
        "## Arms (exploratory)", "",
        markdown_table(arm_rows(results)),
        "",
        "Exploratory: p-values are unadjusted and decide nothing. \"every run\" counts a failed "
        "run (" + " or ".join(FAILURES) + ", `cnnlab.metrics.failure_of`) at its failure value "
        "(chance accuracy: the majority-class share), as the confirmatory tests do; the next "
        "column leaves failed runs out. Intervals: 95% Student-t over seeds, clipped to the "
        "metric's range; none where every seed gave the same value. Δ is the same paired "
        "difference as the confirmatory table's, with a 95% interval here and one at 1 − α of "
        "its look there (the one that decides, wider when α < 0.05). The interval is Student-t "
        "and p is the test named beside it, so the two can disagree (an interval across 0 "
        "beside a small p: the exact test on a coarse lattice, or the two-part test where a "
        "run failed). Δ's p: the paired test "
        "(t, or exact sign flips where the differences sit on a coarse lattice), or the two-part "
        "test where a run failed (failure counts and the seeds where both trained). Failure "
        "rate p: Boschloo's "
        "exact test, failed / not failed, arm against the baseline.",
        "",
    ]
    if results.mechanisms:
        lines += ["## Mechanisms (exploratory)", "", markdown_table(mechanism_rows(results)), "",
                  *[f"- `{m}`: {METRICS[m].meaning}" for m in results.mechanisms],
                  "", "Δ vs the baseline, paired by seed, every run; p unadjusted (exploratory).",
                  ""]
    if results.running:
        lines += ["## Incomplete", "",
                  f"{len(results.running)} trials were still running or queued when this report "
                  "was written (another worker, or an interrupted run); some arms have fewer "
                  "seeds than planned. Rerun `cnnlab ablate` (or `cnnlab report`) when they "
                  "finish.", "", *[f"- {key}" for key in results.running], ""]
    if results.failed:
        lines += ["## Trials that did not run", "", *[f"- {f}" for f in results.failed], ""]
    lines += [f"![{name}]({name})" for name in images]
    return "\n".join(lines) + "\n"


def write_report(results: Results, out: Path) -> Results:
    """Write ``results`` (``results.collect``) under ``out``."""
    images = plots(results) if results.arms else {}
    claim_study_folder(out)
    for name, png in images.items():
        write_owned(out, name, png)
    write_owned(out, "results.csv", results_csv(results))
    write_owned(out, "report.md", markdown(results, list(images)))
    return results

