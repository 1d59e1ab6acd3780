"""An ablation's figures as PNG bytes, drawn from its ``Results``.

Readable at a glance: every arm its own colour and marker; a failed seed a red cross, a
censored value ("never reached") an open triangle at its bound, never a number with an
interval; metrics on a ratio scale (a weight norm, seconds) on an axis from 0, so a shrink of
8% looks like 8%; one panel per mechanism metric, stacked, none empty. Arms' intervals are the
same 95% intervals the console prints; the forest plot shows each confirmatory Δ with the
interval of the look that last tested it. Figures are matplotlib ``Figure`` objects, not
pyplot's: no backend to choose, no global state, safe in the report-writing thread.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from cnnlab.images import figure_png
from cnnlab.metrics import METRICS, shown
from cnnlab.studies.ablations.results import Results
from cnnlab.studies.statistics.comparisons import Interval

MARKERS = "osD^vP*Xhp<>"


def styles(count: int) -> list[tuple[Any, str]]:
    """(colour, marker) per arm, no two alike: tab10 up to 10 arms, tab20 up to 20, then a
    continuous map; markers cycle apart from colours."""
    cmap = colormaps["tab10" if count <= 10 else "tab20" if count <= 20 else "viridis"]
    colours = [cmap(i if count <= 20 else i / max(1, count - 1)) for i in range(count)]
    return [(colours[i], MARKERS[i % len(MARKERS)]) for i in range(count)]


def _errors(intervals: list[Interval]) -> np.ndarray:
    """Asymmetric error bars (below, above the mean); zero where no interval exists."""
    return np.array([[0.0, 0.0] if not i.spread else [i.mean - i.low, i.high - i.mean]
                     for i in intervals]).reshape(-1, 2).T


def _limits(ax: Any, metric: str, values: list[float]) -> None:
    """Zoom to the data, except that a ratio-scale metric (range [0, ∞)) starts at 0."""
    low_bound, high_bound = METRICS[metric].bounds
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return
    low, high = min(finite), max(finite)
    pad = 0.1 * (high - low) + 1e-3
    if low_bound == 0 and high_bound == math.inf:
        ax.set_ylim(0, high + pad)
    else:
        ax.set_ylim(max(low - pad, low_bound - pad), min(high + pad, high_bound + pad))


def _per_arm(ax: Any, results: Results, metric: str, intervals: list[Interval]) -> int:
    """Per arm that measured ``metric``: each seed (dot; failed: red ×; censored: open
    triangle at its bound), and the mean with its 95% interval (none where a seed is
    censored: the mean is only a bound), in the arm's colour of every figure; the baseline's
    tick is bold. Returns how many arms measured none (left out, not an empty column)."""
    rng = np.random.default_rng(0)
    colours = dict(zip([a.arm for a in results.arms], styles(len(results.arms)), strict=True))
    kept = [(a.arm, i) for a, i in zip(results.arms, intervals, strict=True)
            if any(r.value(metric) is not None for r in results.trials if r.arm == a.arm)]
    names = [name for name, _ in kept]
    values: list[float] = []
    for x, (name, interval) in enumerate(kept):
        rows = [r for r in results.trials if r.arm == name]
        censored = metric == "epochs_to_target" and any(r.censored for r in rows)
        colour = colours[name][0]
        if not math.isnan(interval.mean) and not censored:
            ax.errorbar([x], [interval.mean], yerr=_errors([interval]), fmt="D", color=colour,
                        markersize=8, capsize=6, elinewidth=2, zorder=2)
            values += [v for v in (interval.low, interval.high) if not math.isnan(v)]
        for r in rows:
            v = r.value(metric)
            if v is None:
                continue
            values.append(v)
            jitter = x + rng.uniform(-0.18, 0.18)
            if r.failure is not None:
                ax.plot(jitter, v, "x", color="tab:red", markersize=7, zorder=3)
            elif metric == "epochs_to_target" and r.censored:
                ax.plot(jitter, v, "^", markerfacecolor="none", color="black", markersize=7,
                        zorder=3)
            else:
                ax.plot(jitter, v, "o", color="black", markersize=3.5, zorder=3)
    ax.grid(axis="y", alpha=0.3)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    for tick, name in zip(ax.get_xticklabels(), names, strict=True):
        if name == results.spec.baseline:
            tick.set_fontweight("bold")
    _limits(ax, metric, values)
    return len(results.arms) - len(kept)


def _bars(results: Results) -> bytes:
    metric = results.spec.metric
    fig = Figure(figsize=(max(5, 0.9 * len(results.arms) + 2), 4.5))
    ax = fig.subplots()
    _per_arm(ax, results, metric, [a.itt for a in results.arms])
    ax.set_ylabel(f"{metric} (every seed; mean, 95% CI)")
    ax.set_title(f"{results.study}: ◆ mean, dots = seeds, × = failed (at its failure value), "
                 "baseline in bold", fontsize=9)
    fig.tight_layout()
    return figure_png(fig)


def _forest(results: Results) -> bytes | None:
    """Each confirmatory Δ with its interval, a panel per metric: Δ of a failure rate and Δ of
    epochs on one x-axis read as one scale."""
    checks = [c for c in results.checks if c.comparison.delta.n]
    if not checks:
        return None
    metrics = list(dict.fromkeys(c.comparison.metric for c in checks))
    panels = [[c for c in checks if c.comparison.metric == m] for m in metrics]
    fig = Figure(figsize=(8, sum(0.55 * len(p) + 1.3 for p in panels) + 0.5))
    axes = fig.subplots(len(panels), 1, squeeze=False,
                        gridspec_kw={"height_ratios": [len(p) + 1 for p in panels]})
    for ax, metric, panel in zip(axes[:, 0], metrics, panels, strict=True):
        for y, check in enumerate(panel):
            c = check.comparison
            colour = {"as expected": "tab:green", "against": "tab:red"}.get(check.outcome,
                                                                             "tab:gray")
            ax.errorbar([c.delta.mean], [y], xerr=_errors([c.delta]), fmt="o", color=colour,
                        capsize=4)
            label = f"{c.decision}, p_Holm {c.p_adj:.3g} at α {c.alpha:.3g}"
            ax.annotate(label, (c.delta.mean, y), xytext=(0, 7), textcoords="offset points",
                        ha="center", fontsize=7)
        ax.axvline(0, color="black", linewidth=1)
        ax.set_yticks(range(len(panel)), [f"{c.expectation.arm}\nvs {c.expectation.than}"
                                          for c in panel], fontsize=7)
        ax.set_ylim(-0.7, len(panel) - 0.3)
        ax.invert_yaxis()
        ax.set_xlabel(f"Δ {shown(metric)} (paired by seed, every run; interval at the level "
                      "of its look)", fontsize=8)
    fig.suptitle(f"{results.study}: confirmatory comparisons (green: as expected, red: "
                 "against), a panel per metric", fontsize=9)
    fig.tight_layout()
    return figure_png(fig)


def _mechanisms(results: Results) -> bytes | None:
    metrics = list(results.mechanisms)
    if not metrics:
        return None
    width = max(6.0, 0.6 * len(results.arms) + 2)
    fig = Figure(figsize=(width, 3.4 * len(metrics)))
    axes = fig.subplots(len(metrics), 1, squeeze=False)
    for ax, name in zip(axes[:, 0], metrics, strict=True):
        missing = _per_arm(ax, results, name, [i for _, i, _ in results.mechanisms[name]])
        note = (f"\n({missing} of {len(results.arms)} arms measured none, e.g. no batch norm: "
                "left out)" if missing else "")
        ax.set_title(f"{name}: {METRICS[name].meaning}{note}", fontsize=9)
    fig.suptitle(f"{results.study}: mechanism metrics (exploratory; mean, 95% CI, seeds)",
                 fontsize=10)
    fig.tight_layout()
    return figure_png(fig)


def _curves(results: Results) -> bytes:
    names = [a.arm for a in results.arms]
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for name, (colour, marker) in zip(names, styles(len(names)), strict=True):
        rows = [r for r in results.trials if r.arm == name and r.curve]
        trained = [r.curve for r in rows if r.failure is None]
        curves, failed = (trained, False) if trained else ([r.curve for r in rows], True)
        length = min((len(c) for c in curves), default=0)
        if length:
            acc = np.array([c[:length] for c in curves])
            ax.plot(range(1, length + 1), np.nanmean(acc, axis=0), color=colour, marker=marker,
                    markersize=4, linestyle="--" if failed else "-",
                    label=f"{name} (every seed failed)" if failed else name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (mean over seeds that did not fail;\n"
                  "dashed: an arm whose every seed failed)", fontsize=8)
    if ax.get_lines():
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(f"{results.study}: learning curves")
    return figure_png(fig)


def _by_factor(results: Results) -> dict[str, bytes]:
    """The metric against a numeric factor, a line per level of the other factor."""
    factors, out = list(results.spec.factors), {}
    metric = results.spec.metric
    for x_factor in factors if len(factors) == 2 else []:
        try:
            x_of = {a.arm: float(a.levels[x_factor]) for a in results.arms}
        except ValueError:
            continue
        (group,) = [f for f in factors if f != x_factor]
        levels = list(results.spec.factors[group])
        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        for lv, (colour, marker) in zip(levels, styles(len(levels)), strict=True):
            arms = sorted((a for a in results.arms if a.levels[group] == lv),
                          key=lambda a: x_of[a.arm])
            ax.errorbar([x_of[a.arm] for a in arms], [a.itt.mean for a in arms],
                        yerr=_errors([a.itt for a in arms]), marker=marker, color=colour,
                        capsize=3, label=f"{group}={lv}")
        ax.set_xscale("log", base=2 if all(x.is_integer() for x in x_of.values()) else 10)
        ax.set_xlabel(x_factor)
        ax.set_ylabel(f"{metric} (every seed; mean, 95% CI)")
        ax.legend(fontsize=8)
        ax.set_title(f"{results.study}: {metric} vs {x_factor}")
        out[f"by_{x_factor.replace('.', '_')}.png"] = figure_png(fig)
    return out


def plots(results: Results) -> dict[str, bytes]:
    """PNG bytes by file name: per-seed bars, the confirmatory forest, mechanisms, curves, the
    metric against a numeric factor."""
    out = {"bars.png": _bars(results)}
    for name, png in (("forest.png", _forest(results)), ("mechanisms.png", _mechanisms(results))):
        if png is not None:
            out[name] = png
    out["curves.png"] = _curves(results)
    return out | _by_factor(results)

