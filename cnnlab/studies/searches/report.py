"""A search's report: ``trials.csv``, Optuna's plots, hidden units vs CV accuracy, ``search.md``."""

from __future__ import annotations

import csv
import io
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import optuna
from optuna.trial import FrozenTrial, TrialState
from optuna.visualization import matplotlib as ov

from cnnlab.images import figure_png
from cnnlab.outputs.files import write_owned
from cnnlab.studies.searches.spec import SearchSpec
from cnnlab.studies.searches.store import SearchStore
from cnnlab.tracking.summary import StudySummary


@dataclass(frozen=True)
class SearchResult:
    """The best trial (by CV mean), its refit's test accuracy, and where the report is."""

    study: str
    best_trial: int
    params: dict[str, Any]
    cv_mean: float
    cv_std: float
    fold_scores: list[float]
    test_acc: float
    out: Path  # the report: out/search.md; the refit run: out/refit
    trials: int = 0  # the trials the search asked for
    unfinished: list[str] = field(default_factory=list)  # "slot N: why": failed or lost
    unstarted: int = 0  # slots --timeout left queued

    def numbers(self) -> dict[str, float]:
        return {"cv_mean": self.cv_mean, "cv_std": self.cv_std, "test_acc": self.test_acc,
                "best_trial": self.best_trial}


def _trials_csv(store: SearchStore) -> str:
    trials = store.ran()
    keys = sorted({k for t in trials for k in t.params})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["number", "state", *keys, "cv_mean", "cv_std", "fold_scores",
                     "fold_epochs", "reason"])
    for t in trials:
        writer.writerow([t.number, t.state.name, *(t.params.get(k, "") for k in keys),
                         "" if t.value is None else t.value,
                         _blank(store.cv_std(t)),
                         " ".join(f"{s:.4f}" for s in store.fold_scores(t)),
                         _blank(store.fold_epochs(t)), store.reason(t) or ""])
    return buffer.getvalue()


def _blank(value: Any) -> Any:
    return "" if value is None else value


LEGEND_ENTRIES = 12  # beyond this a legend hides the plot and names nothing a reader can find


def _score(store: SearchStore, trial: FrozenTrial) -> float | None:
    """A trial's accuracy as far as it got: the mean of its folds, else (pruned in fold 0) the
    last validation accuracy it reported."""
    if scores := store.fold_scores(trial):
        return statistics.mean(scores)
    values = trial.intermediate_values
    return values[max(values)] if values else None


def _plots(store: SearchStore) -> dict[str, bytes]:
    """The search's figures. Optuna's plots switch matplotlib to its ggplot style for the
    whole process (``plt.style.use``); drawn inside ``rc_context`` the style ends with them
    (an ablation reported after a search, in one notebook, was grey-backgrounded)."""
    with matplotlib.rc_context():
        return _drawn(store)


def _drawn(store: SearchStore) -> dict[str, bytes]:
    study = store.study
    plots: dict[str, Callable[[optuna.Study], Any]] = {
             "history.png": ov.plot_optimization_history,
             "intermediate.png": ov.plot_intermediate_values,
             "slice.png": ov.plot_slice,
             "importances.png": ov.plot_param_importances}
    out = {}
    for name, plot in plots.items():
        before = set(plt.get_fignums())
        try:
            with warnings.catch_warnings():  # with very few trials the plots warn; still drawn
                warnings.simplefilter("ignore", UserWarning)
                axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few trials for this plot
            for number in set(plt.get_fignums()) - before:  # its half-drawn figure, not others
                plt.close(number)
            continue
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        legend = first.get_legend()
        if legend is not None and len(legend.texts) > LEGEND_ENTRIES:  # a line per trial
            legend.remove()
            first.set_title(f"{first.get_title()}: a line per trial (pruned trials end early)")
        out[name] = figure_png(first.figure)
    widths = [k for k in ("model.hidden_units.0",) if any(k in t.params for t in study.trials)]
    for key in widths:  # the course: hidden units chosen by cross-validation
        fig, ax = plt.subplots(figsize=(6, 4))
        ran = [t for t in store.ran() if key in t.params]
        drawn = 0
        for state, style, what in ((TrialState.COMPLETE, "o", "complete: mean of its folds"),
                                   (TrialState.PRUNED, "x", "pruned: its last reported accuracy")):
            points = [(t.params[key], _score(store, t)) for t in ran if t.state == state]
            points = [(x, y) for x, y in points if y is not None]
            if points:  # a legend entry only for what is drawn
                ax.plot(*zip(*points, strict=True), style, label=f"{what} ({len(points)})")
                drawn += len(points)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden units (first FC layer)")
        ax.set_ylabel("CV accuracy")
        ax.set_title(f"{drawn} of {len(ran)} trials (failed ones, and pruned ones before "
                     "their first epoch, have no accuracy)" if drawn < len(ran)
                     else f"all {drawn} trials", fontsize=9)
        if drawn:
            ax.legend(fontsize=8)
        out["hidden_units.png"] = figure_png(fig)
    return out


def trial_records(store: SearchStore) -> list[dict[str, Any]]:
    """One numeric row per trial (W&B's table): number, state, parameters, CV mean and std."""
    rows = []
    for t in store.ran():
        row: dict[str, Any] = {"number": t.number, "state": t.state.name, **t.params,
                               "cv_mean": t.value, "cv_std": store.cv_std(t),
                               "folds": len(store.fold_scores(t)),
                               "fold_epochs": store.fold_epochs(t) or 0}
        rows.append({k: str(v) if isinstance(v, list) else v for k, v in row.items()})
    return rows


def search_summary(store: SearchStore, spec: SearchSpec, result: SearchResult,
                   files: list[Path]) -> StudySummary:
    """The search's W&B summary run: the trials table, best values, the report as artifact."""
    numbers = {**result.numbers(), **{f"best/{k}": v for k, v in result.params.items()},
               "n_trials": len(store.trials())}  # "trials": the table, as on no ablation's run
    return StudySummary(store.name, spec.description,
                        {"best_params": result.params, "folds": spec.folds},
                        {"trials": trial_records(store)}, numbers, files,
                        bar=None, step=store.summary_step())


def write_search_report(store: SearchStore, spec: SearchSpec, result: SearchResult,
                        out: Path) -> list[Path]:
    """Write ``search.md``, ``trials.csv`` and the plots; returns their paths."""
    states = [t.state for t in store.ran()]
    count = {s.name.lower(): states.count(s) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                        TrialState.FAIL)}
    epochs = sum(store.fold_epochs(t) or 0 for t in store.trials())
    images = _plots(store)
    for name, png in images.items():
        write_owned(out, name, png)
    write_owned(out, "trials.csv", _trials_csv(store))
    params = "\n".join(f"| `{k}` | {v} |" for k, v in result.params.items())
    scores = ", ".join(f"{s:.4f}" for s in result.fold_scores)
    text = "\n".join([
        f"# Search: {store.name}", "", spec.description, "",
        f"- {spec.folds}-fold stratified CV of the training portion; sampler "
        f"{spec.sampler['name']}, pruner {spec.pruner['name']}",
        f"- trials: {count['complete']} complete, {count['pruned']} pruned, {count['fail']} "
        f"failed; {epochs} fold-epochs trained",
        f"- best trial {result.best_trial}: CV accuracy {result.cv_mean:.4f} ± "
        f"{result.cv_std:.4f} (std over folds: {scores})",
        f"- refit on the whole training portion, tested once: **test accuracy "
        f"{result.test_acc:.4f}**", "",
        "| parameter | best value |", "|---|---|", params, "",
        *[f"![{name}]({name})" for name in images], "",
    ])
    write_owned(out, "search.md", text)
    return [out / name for name in ("search.md", "trials.csv", *images)]
