"""Hyperparameter search by stratified k-fold cross-validation of the training portion.

Each Optuna trial samples a configuration from the spec's space and trains it on k folds (the
test split is never touched). After fold i the trial reports the cumulative mean of its fold
validation accuracies at step i (the fold's own score for the Wilcoxon pruner, which compares
folds as paired instances), so a pruner can stop it between folds. Afterwards the best
configuration is retrained on the whole training portion and tested once.
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

from cnnlab.config import ExperimentConfig, load_config
from cnnlab.data.sources import ImageData, load_cached
from cnnlab.errors import CnnlabError
from cnnlab.files import owner_id, write_owned
from cnnlab.images import figure_png
from cnnlab.studies.ablation import run_workers
from cnnlab.studies.spec import one_process, read_spec, safe_name, yaml_scalar
from cnnlab.studies.storage import (
    is_dead_local_worker,
    load_study,
    open_storage,
    open_study_storage,
    study_for,
)

SPEC_KEYS = ("name", "description", "configs", "overrides", "space", "folds", "trials",
             "sampler", "pruner", "quick")
SPACE_TYPES = ("float", "int", "categorical")
PRUNERS: dict[str, Callable[[dict[str, Any], int], optuna.pruners.BasePruner]] = {
    "median": lambda o, folds: optuna.pruners.MedianPruner(
        n_startup_trials=o.get("n_startup_trials", 5), n_warmup_steps=o.get("n_warmup_steps", 0)),
    "hyperband": lambda o, folds: optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=folds, reduction_factor=o.get("reduction_factor", 3)),
    "wilcoxon": lambda o, folds: optuna.pruners.WilcoxonPruner(
        p_threshold=o.get("p_threshold", 0.1), n_startup_steps=o.get("n_startup_steps", 1)),
    "none": lambda o, folds: optuna.pruners.NopPruner(),
}
SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}


@dataclass(frozen=True)
class SearchSpec:
    name: str
    description: str
    configs: tuple[str, ...]
    overrides: tuple[str, ...]
    space: dict[str, dict[str, Any]]
    folds: int
    trials: int
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    quick: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "configs": list(self.configs),
                "overrides": list(self.overrides), "space": self.space, "folds": self.folds,
                "sampler": self.sampler, "pruner": self.pruner, "quick": list(self.quick)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], trials: int = 0) -> SearchSpec:
        return cls(d["name"], d["description"], tuple(d["configs"]), tuple(d["overrides"]),
                   d["space"], d["folds"], trials, d["sampler"], d["pruner"], tuple(d["quick"]))


def _fail(path: Path, what: str, allowed: str) -> CnnlabError:
    return CnnlabError(f"spec {path}: {what}; allowed: {allowed}")


def load_search_spec(path: Path) -> SearchSpec:
    """Read and validate a search spec; each dimension's bounds must make a valid config."""
    raw = read_spec(path, SPEC_KEYS)
    space = raw.get("space")
    if not isinstance(space, dict) or not space:
        raise _fail(path, "space is empty", "a mapping of config keys to {type: float|int|"
                    "categorical, ...}")
    for key, dim in space.items():
        kind = dim.get("type") if isinstance(dim, dict) else None
        if kind not in SPACE_TYPES:
            raise _fail(path, f"space.{key}.type is {kind!r}", ", ".join(SPACE_TYPES))
        if kind == "categorical":
            ok = isinstance(dim.get("choices"), list) and len(dim["choices"]) > 0
        else:
            low, high = dim.get("low"), dim.get("high")
            ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
            ok = ok and low < high and (not dim.get("log") or low > 0)
        if not ok:
            raise _fail(path, f"space.{key} is {dim}", "categorical with a list of choices, or "
                        "float/int with numbers low < high (log: true needs low > 0)")
    sampler = raw.get("sampler", {"name": "tpe", "seed": 0})
    pruner = raw.get("pruner", {"name": "median"})
    if sampler.get("name") not in SAMPLERS:
        raise _fail(path, f"unknown sampler {sampler.get('name')!r}", ", ".join(SAMPLERS))
    if pruner.get("name") not in PRUNERS:
        raise _fail(path, f"unknown pruner {pruner.get('name')!r}", ", ".join(PRUNERS))
    folds, trials = raw.get("folds", 3), raw.get("trials", 20)
    if not isinstance(folds, int) or folds < 2:
        raise _fail(path, f"folds is {folds!r}", "an integer ≥ 2")
    if not isinstance(trials, int) or trials < 1:
        raise _fail(path, f"trials is {trials!r}", "a positive integer")
    spec = SearchSpec(safe_name(str(raw.get("name") or path.stem)), str(raw.get("description", "")),
                      tuple(raw.get("configs", [])), tuple(raw.get("overrides", [])), space, folds,
                      trials, sampler, pruner, tuple(raw.get("quick", [])))
    for corner in CORNERS:  # both ends of every range must be valid configs
        try:
            one_process(corner_config(spec, corner))
        except CnnlabError as err:
            raise _fail(path, f"space at its {corner} end: {err}", "a space whose values are valid "
                        "config values") from None
    return spec


CORNERS = ("low", "high")


def corner_config(spec: SearchSpec, corner: str, quick: bool = False) -> ExperimentConfig:
    """The config at the ``low`` or ``high`` end of every range (first choice of categoricals)."""
    fixed = {k: (d["choices"][0] if d["type"] == "categorical" else d[corner])
             for k, d in spec.space.items()}
    return load_config(list(spec.configs), [*spec.overrides, *(spec.quick if quick else ()),
                                            *as_overrides(fixed)])


def check_data(spec: SearchSpec, quick: bool) -> None:
    """The dataset loads, splits into ``spec.folds`` folds and fits the network at both ends of
    the space: fail before the study exists, not in every trial."""
    from cnnlab.data.datamodule import DataModule
    from cnnlab.models.convnet import feature_shape

    datasets: dict[tuple[Any, ...], ImageData] = {}
    for corner in CORNERS:
        cfg = corner_config(spec, corner, quick)
        data = load_cached(cfg.data, datasets)
        try:
            DataModule(cfg.data, cfg.seed, fold=(0, spec.folds), data=data)
            feature_shape(cfg.model, data.input_shape)
        except CnnlabError as err:
            raise CnnlabError(f"spec {spec.name}: space at its {corner} end: {err}") from None


def as_overrides(params: dict[str, Any]) -> list[str]:
    """Sampled params → overrides; ``key.0``, ``key.1``… build the list ``key`` (FC widths)."""
    lists: dict[str, dict[int, Any]] = {}
    out = []
    for key, value in params.items():
        match = re.fullmatch(r"(.+)\.(\d+)", key)
        if match:
            lists.setdefault(match[1], {})[int(match[2])] = value
        else:
            out.append(f"{key}={yaml_scalar(value)}")
    for key, items in lists.items():
        out.append(f"{key}={yaml_scalar([items[i] for i in sorted(items)])}")
    return out


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    params = {}
    for key, dim in space.items():
        if dim["type"] == "categorical":
            choices = [c if isinstance(c, str | int | float | bool) or c is None else yaml_scalar(c)
                       for c in dim["choices"]]
            value = trial.suggest_categorical(key, choices)
            params[key] = yaml.safe_load(value) if isinstance(value, str) and value[:1] == "[" else value
        elif dim["type"] == "int":
            params[key] = trial.suggest_int(key, dim["low"], dim["high"], log=dim.get("log", False))
        else:
            params[key] = trial.suggest_float(key, dim["low"], dim["high"], log=dim.get("log", False))
    return params


class Pruned(Exception):
    """The trial stops: pruned between folds, or its training diverged."""


def cross_validate(trial: optuna.Trial, spec: SearchSpec, quick: bool, out: Path, threads: int,
                   datasets: dict[tuple[Any, ...], ImageData]) -> float:
    """Train the trial's config on each fold; report after each fold so it can be pruned."""
    from cnnlab.training.run import run

    overrides = [*spec.overrides, *(spec.quick if quick else ()),
                 *as_overrides(suggest(trial, spec.space))]
    cfg = load_config(list(spec.configs), overrides)
    cfg.wandb.group, cfg.wandb.job_type = spec.name, "fold"
    cfg.trainer.images = False  # per-fold images would cost more than the report shows
    if threads:
        cfg.trainer.threads = threads
    data = load_cached(cfg.data, datasets)
    scores: list[float] = []
    epochs = 0
    for fold in range(spec.folds):
        cfg.wandb.name = f"trial {trial.number} fold {fold}"
        cfg.wandb.tags = [spec.name, f"trial={trial.number}", f"fold={fold}"]
        result = run(cfg, out / "trials" / f"{trial.number:04d}" / f"fold{fold}",
                     fold=(fold, spec.folds), data=data, overwrite=True)
        epochs += result.metrics["epochs"]
        trial.set_user_attr("fold_epochs", epochs)
        if result.metrics["diverged"]:
            raise Pruned(f"diverged in fold {fold}: training loss "
                         f"{result.metrics['train_loss']:.4g}")
        scores.append(result.metrics["val_acc"])
        trial.set_user_attr("fold_scores", scores)
        wilcoxon = spec.pruner["name"] == "wilcoxon"
        trial.report(scores[-1] if wilcoxon else statistics.mean(scores), fold)
        if trial.should_prune():
            raise Pruned(f"pruned after fold {fold} (CV mean so far {statistics.mean(scores):.4f})")
    trial.set_user_attr("cv_std", statistics.stdev(scores))
    return statistics.mean(scores)


def reconcile(study: optuna.Study) -> None:
    """Fail trials left RUNNING by a dead worker and queue their parameters again."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_dead_local_worker(t.user_attrs.get("worker")):
            study.tell(t.number, state=TrialState.FAIL)
            if t.params:
                study.enqueue_trial(t.params)


def _counted(study: optuna.Study, upto: int) -> int:
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(1 for t in study.get_trials(deepcopy=False, states=states) if t.number <= upto)


def work(study: optuna.Study, spec: SearchSpec, quick: bool, out: Path, target: int,
         deadline: float, threads: int = 0, on_done: Callable[[], None] = lambda: None) -> None:
    """Run trials until the study holds ``target`` finished ones (or the deadline passes).

    A trial counts once it is running; one whose number would exceed the target is failed
    unrun, so several workers never overshoot.
    """
    datasets: dict[tuple[Any, ...], ImageData] = {}
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    while time.monotonic() < deadline and len(study.get_trials(deepcopy=False, states=done)) < target:
        trial = study.ask()
        trial.set_user_attr("worker", owner_id())
        if _counted(study, trial.number) > target:
            trial.set_user_attr("note", "beyond the requested trial count; not run")
            study.tell(trial, state=TrialState.FAIL)
            return
        try:
            value = cross_validate(trial, spec, quick, out, threads, datasets)
        except Pruned as reason:
            trial.set_user_attr("reason", str(reason))
            study.tell(trial, state=TrialState.PRUNED)
        except (CnnlabError, RuntimeError, ValueError) as err:
            trial.set_user_attr("reason", (str(err).splitlines() or [type(err).__name__])[0])
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)
        on_done()


def open_search(spec: SearchSpec, quick: bool, storage: optuna.storages.BaseStorage, name: str,
                worker: int = 0) -> optuna.Study:
    """The study with its sampler and pruner. The sampler's seed comes from the spec's, the worker
    and the number of trials already stored: a resumed or extended search goes on exploring (its
    history is the storage) instead of proposing the configurations it already ran."""
    attrs = {**spec.to_dict(), "preset": "quick" if quick else "full"}
    study = study_for(storage, name, "maximize", attrs)  # created once; guards against another spec
    stored = len(study.get_trials(deepcopy=False))
    seed = np.random.SeedSequence([spec.sampler.get("seed", 0), worker, stored]).generate_state(1)[0]
    sampler = SAMPLERS[spec.sampler["name"]](int(seed))
    pruner = PRUNERS[spec.pruner["name"]](spec.pruner, spec.folds)
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def _worker_main(url: str, name: str, out: str, target: int, deadline_s: float,
                 index: int) -> None:
    study = load_study(open_storage(url), name)
    attrs = study.user_attrs["spec"]
    spec = SearchSpec.from_dict(attrs)
    quick = attrs["preset"] == "quick"
    study = open_search(spec, quick, open_storage(url), name, worker=index)
    work(study, spec, quick, Path(out), target, time.monotonic() + deadline_s, threads=1)


def tune(spec: SearchSpec, quick: bool, out: Path, url: str, name: str, workers: int,
         timeout: float | None, console: Any) -> dict[str, Any]:
    """Run (or resume) the search, refit the best config, test it once, write the report."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    check_data(spec, quick)
    study = open_search(spec, quick, open_study_storage(out, url), name)
    reconcile(study)
    deadline_s = timeout if timeout else math.inf
    done_states = (TrialState.COMPLETE, TrialState.PRUNED)
    bar = Progress(TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("ETA"), TimeRemainingColumn(), console=console,
                   disable=not console.is_terminal)
    with bar:
        task = bar.add_task(name, total=spec.trials)

        def progress() -> None:
            trials = study.get_trials(deepcopy=False, states=done_states)
            bar.update(task, completed=len(trials))

        progress()
        if workers == 1:
            work(study, spec, quick, out, spec.trials, time.monotonic() + deadline_s,
                 on_done=progress)
        else:
            run_workers(_worker_main, [(url, name, str(out), spec.trials, deadline_s, i)
                                       for i in range(workers)], progress)
    return finish_search(study, spec, quick, out, console)


def finish_search(study: optuna.Study, spec: SearchSpec, quick: bool, out: Path,
                  console: Any) -> dict[str, Any]:
    """Refit the best trial's config on all training data, test once, write search.md."""
    from cnnlab.training.run import run

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise CnnlabError(f"study {study.study_name}: no trial completed (all pruned or failed); "
                          "allowed: more --trials, or a wider space")
    best = study.best_trial
    params = {k: yaml.safe_load(v) if isinstance(v, str) and v[:1] == "[" else v
              for k, v in best.params.items()}
    cfg = load_config(list(spec.configs), [*spec.overrides, *(spec.quick if quick else ()),
                                           *as_overrides(params)])
    cfg.wandb.group, cfg.wandb.job_type, cfg.wandb.name = spec.name, "refit", "refit best"
    result = run(cfg, out / "refit", refit=True, overwrite=True)  # a rerun refits the best
    summary = {"best_trial": best.number, "params": params, "cv_mean": best.value,
               "cv_std": best.user_attrs.get("cv_std", math.nan),
               "fold_scores": best.user_attrs.get("fold_scores", []),
               "test_acc": result.metrics["test_acc"]}
    write_search_report(study, spec, summary, out)
    from cnnlab.tracking import search_summary_run

    search_summary_run(cfg, out, study.study_name, summary)
    return summary


def _trials_csv(study: optuna.Study) -> str:
    trials = [t for t in study.get_trials(deepcopy=False) if "note" not in t.user_attrs]
    keys = sorted({k for t in trials for k in t.params})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["number", "state", *keys, "cv_mean", "cv_std", "fold_scores",
                     "fold_epochs", "reason"])
    for t in trials:
        writer.writerow([t.number, t.state.name, *(t.params.get(k, "") for k in keys),
                         "" if t.value is None else t.value, t.user_attrs.get("cv_std", ""),
                         " ".join(f"{s:.4f}" for s in t.user_attrs.get("fold_scores", [])),
                         t.user_attrs.get("fold_epochs", ""), t.user_attrs.get("reason", "")])
    return buffer.getvalue()


def _plots(study: optuna.Study) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ov


    plots = {"history.png": ov.plot_optimization_history,
             "intermediate.png": ov.plot_intermediate_values,
             "slice.png": ov.plot_slice,
             "importances.png": ov.plot_param_importances}
    out = {}
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():  # with very few trials the plots warn; still drawn
                warnings.simplefilter("ignore", UserWarning)
                axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few trials for this plot
            plt.close("all")
            continue
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        out[name] = figure_png(first.figure)
    widths = [k for k in ("model.hidden_units.0",) if any(k in t.params for t in study.trials)]
    for key in widths:  # the course: hidden units chosen by cross-validation
        fig, ax = plt.subplots(figsize=(6, 4))
        for state, style in ((TrialState.COMPLETE, "o"), (TrialState.PRUNED, "x")):
            trials = [t for t in study.get_trials(deepcopy=False, states=(state,))
                      if key in t.params and t.user_attrs.get("fold_scores")]
            ax.plot([t.params[key] for t in trials],
                    [statistics.mean(t.user_attrs["fold_scores"]) for t in trials], style,
                    label=f"{state.name.lower()} (mean of its folds)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden units (first FC layer)")
        ax.set_ylabel("CV accuracy")
        ax.legend()
        out["hidden_units.png"] = figure_png(fig)
    return out


def write_search_report(study: optuna.Study, spec: SearchSpec, summary: dict[str, Any],
                        out: Path) -> None:
    states = [t.state for t in study.get_trials(deepcopy=False)
              if "note" not in t.user_attrs]
    count = {s.name.lower(): states.count(s) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                        TrialState.FAIL)}
    epochs = sum(t.user_attrs.get("fold_epochs", 0) for t in study.get_trials(deepcopy=False))
    images = _plots(study)
    for name, png in images.items():
        write_owned(out, name, png)
    write_owned(out, "trials.csv", _trials_csv(study))
    params = "\n".join(f"| `{k}` | {v} |" for k, v in summary["params"].items())
    scores = ", ".join(f"{s:.4f}" for s in summary["fold_scores"])
    text = "\n".join([
        f"# Search: {study.study_name}", "", spec.description, "",
        f"- {spec.folds}-fold stratified CV of the training portion; sampler "
        f"{spec.sampler['name']}, pruner {spec.pruner['name']}",
        f"- trials: {count['complete']} complete, {count['pruned']} pruned, {count['fail']} "
        f"failed; {epochs} fold-epochs trained",
        f"- best trial {summary['best_trial']}: CV accuracy {summary['cv_mean']:.4f} ± "
        f"{summary['cv_std']:.4f} (std over folds: {scores})",
        f"- refit on the whole training portion, tested once: **test accuracy "
        f"{summary['test_acc']:.4f}**", "",
        "| parameter | best value |", "|---|---|", params, "",
        *[f"![{name}]({name})" for name in images], "",
    ])
    write_owned(out, "search.md", text)


def with_overrides(spec: SearchSpec, trials: int | None, folds: int | None) -> SearchSpec:
    """The spec with the command line's --trials / --folds."""
    return replace(spec, trials=trials or spec.trials, folds=folds or spec.folds)
