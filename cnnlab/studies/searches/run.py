"""Hyperparameter search by stratified k-fold cross-validation of the training portion.

Each Optuna trial samples a configuration from the spec's space and trains it on k folds (the
test split is never touched). Intermediate values, so a pruner can stop a trial early:
fold 0's validation accuracy after each epoch at steps 0 … E−1 (E: the spec's most epochs), then
the cumulative mean of the fold accuracies after fold i ≥ 1 at step E − 1 + i. Most bad
configurations show in fold 0's first epochs, so that is where most of the budget is saved. The
Wilcoxon pruner compares folds as paired instances instead: its step i is fold i's own score.
The study holds one queued slot per requested trial and workers run them through the shared
trial loop, so a search never runs more than ``--trials`` trials. Afterwards the best
configuration is retrained on the whole training portion and tested once.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import lightning as L
import optuna
import yaml
from lightning.pytorch.callbacks import Callback
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from cnnlab.config import ExperimentConfig, load_config, to_yaml, with_values
from cnnlab.data.sources import Datasets, load_cached
from cnnlab.errors import CnnlabError
from cnnlab.metrics import VAL_ACC
from cnnlab.outputs.files import refuse_links
from cnnlab.studies.engine.progress import StudyProgress, study_bars
from cnnlab.studies.engine.storage import open_storage, open_study_storage, with_journal
from cnnlab.studies.engine.store import FINISHED, PENDING
from cnnlab.studies.engine.trials import Queue, liveness, reclaim, trial_config, work
from cnnlab.studies.engine.workers import run_workers
from cnnlab.studies.searches.report import SearchResult, search_summary, write_search_report
from cnnlab.studies.searches.spec import (
    CORNERS,
    SearchSpec,
    as_overrides,
    corner_config,
    suggest,
)
from cnnlab.studies.searches.store import SearchStore
from cnnlab.studies.specs import study_name
from cnnlab.tracking.runs import share_service, small_run, study_run
from cnnlab.training.build import check_buildable
from cnnlab.training.run import run


def check_data(spec: SearchSpec, quick: bool, datasets: Datasets) -> list[ExperimentConfig]:
    """The dataset loads, splits into ``spec.folds`` folds and fits the network at both ends of
    the space: fail before the study exists, not in every trial. Returns the corners' configs."""
    corners = [corner_config(spec, corner, quick) for corner in CORNERS]
    for corner, cfg in zip(CORNERS, corners, strict=True):
        try:
            check_buildable(cfg, datasets, fold=(0, spec.folds))
        except CnnlabError as err:
            raise CnnlabError(f"spec {spec.name}: space at its {corner} end: {err}") from None
    return corners


def pin_search(store: SearchStore, spec: SearchSpec, quick: bool, cfg: ExperimentConfig,
               datasets: Datasets) -> None:
    """Pin (or check) what the search's trials run: the base config its ``configs:`` files
    resolve to, and the content of the data ``cfg`` trains on (once per command, before every
    trial and before the refit)."""
    size = f", data.image_size={cfg.data.image_size}" if cfg.data.image_size else ""
    store.pin_run(to_yaml(load_config(list(spec.configs), spec.base_overrides(quick))),
                  f"data.name={cfg.data.name}{size}", load_cached(cfg.data, datasets).fingerprint)


class EpochPruning(Callback):
    """Reports fold 0's validation accuracy after each epoch and, when the pruner says so, stops
    the fold (gracefully: the fold's run and its W&B record stay complete up to that epoch)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.stopped_at: int | None = None

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        score = trainer.callback_metrics.get(VAL_ACC)
        if trainer.sanity_checking or score is None:
            return
        self.trial.report(float(score), trainer.current_epoch)
        if self.trial.should_prune():
            self.stopped_at, trainer.should_stop = trainer.current_epoch, True


def report_steps(spec: SearchSpec, quick: bool) -> int:
    """How many intermediate steps a trial can report (see the module docstring)."""
    if spec.pruner["name"] == "wilcoxon":
        return spec.folds
    return max_epochs(spec, quick) + spec.folds - 1


def max_epochs(spec: SearchSpec, quick: bool) -> int:
    return max(corner_config(spec, corner, quick).trainer.max_epochs for corner in CORNERS)


def cross_validate(store: SearchStore, spec: SearchSpec, quick: bool, out: Path, threads: int
                   ) -> Callable[[optuna.Trial], float]:
    """The objective: train the trial's config on each fold, reporting fold 0's epochs and then
    each fold so it can be pruned; a diverged fold prunes the trial."""
    datasets: Datasets = {}
    paired = spec.pruner["name"] == "wilcoxon"  # fold scores as paired instances
    first_fold_steps = max_epochs(spec, quick)

    def one(trial: optuna.Trial) -> float:
        overrides = [*spec.base_overrides(quick), *as_overrides(suggest(trial, spec.space))]
        cfg = trial_config(load_config(list(spec.configs), overrides), spec.name, "fold", threads)
        pin_search(store, spec, quick, cfg, datasets)
        scores: list[float] = []
        epochs, state = 0, "failed"
        refuse_links(out, out / "trials" / f"{trial.number:04d}")  # each fold's: ``run``
        try:
            for fold in range(spec.folds):
                fold_cfg = with_values(cfg, {
                    "wandb.name": f"trial {trial.number} fold {fold}",
                    "wandb.tags": [spec.name, f"trial={trial.number}", f"fold={fold}"]})
                pruning = [EpochPruning(trial)] if fold == 0 and not paired else []
                result = run(fold_cfg, out / "trials" / f"{trial.number:04d}" / f"fold{fold}",
                             fold=(fold, spec.folds), datasets=datasets, overwrite=True, takeover=True,
                             context={"study": trial.study.study_name, "trial": trial.number,
                                      "fold": fold}, callbacks=pruning)
                epochs += int(result.number("epochs"))
                SearchStore.record_folds(trial, scores, epochs)
                if result.metrics["diverged"]:
                    state = "pruned"
                    raise optuna.TrialPruned(f"diverged in fold {fold}: training loss "
                                             f"{result.metrics['train_loss']:.4g}")
                if pruning and pruning[0].stopped_at is not None:
                    state = "pruned"
                    raise optuna.TrialPruned(
                        f"pruned in fold 0 after epoch {pruning[0].stopped_at} (validation "
                        f"accuracy {result.history[-1][VAL_ACC]:.4f})")
                scores.append(result.number("val_acc"))
                SearchStore.record_folds(trial, scores, epochs)
                if paired:
                    trial.report(scores[-1], fold)
                elif fold:
                    trial.report(statistics.mean(scores), first_fold_steps - 1 + fold)
                if (paired or fold) and trial.should_prune():
                    state = "pruned"
                    raise optuna.TrialPruned(f"pruned after fold {fold} (CV mean so far "
                                             f"{statistics.mean(scores):.4f})")
            SearchStore.record_spread(trial, statistics.stdev(scores))
            state = "complete"
            return statistics.mean(scores)
        finally:  # one W&B run per trial: its parameters, folds and outcome, beside the folds'
            trial_cfg = with_values(cfg, {"wandb.job_type": "trial",
                                          "wandb.tags": [spec.name, f"trial={trial.number}"]})
            small_run(trial_cfg, out / "trials" / f"{trial.number:04d}", "trial",
                      {"state": state, "fold_scores": scores, "folds_done": len(scores),
                       "fold_epochs": epochs, "cv_mean": statistics.mean(scores) if scores else None,
                       "cv_std": statistics.stdev(scores) if len(scores) > 1 else None},
                      name=f"trial {trial.number}",
                      context={"study": trial.study.study_name, "trial": trial.number,
                               "params": dict(trial.params)})

    return one


def search_study_name(spec: SearchSpec, quick: bool) -> str:
    """A search's study unless ``--study`` names another."""
    return study_name(spec.name, quick)


def open_search(spec: SearchSpec, quick: bool, storage: optuna.storages.BaseStorage, name: str,
                worker: int = 0) -> SearchStore:
    """The study with the spec's sampler and pruner (``SearchStore.open``)."""
    return SearchStore.open(spec, quick, storage, name, report_steps(spec, quick), worker)


def worker_main(url: str, name: str, out: str, deadline_s: float, index: int) -> None:
    """A worker process: its own storage connection and sampler, then its share of the slots."""
    spec, quick = SearchStore.stored_spec(url, name)
    store = open_search(spec, quick, open_storage(url), name, worker=index)
    _work(store, spec, quick, Path(out), time.monotonic() + deadline_s, threads=1)


def _work(store: SearchStore, spec: SearchSpec, quick: bool, out: Path, deadline: float,
          threads: int = 0, on_done: Callable[[], None] = lambda: None) -> None:
    """This process's share of the queued slots; after ``deadline`` it starts none (the slots
    left wait for a rerun)."""
    work([Queue(store, cross_validate(store, spec, quick, out, threads), store.requeue)], on_done,
         stop=lambda: time.monotonic() >= deadline)


def finished_count(trials: list[FrozenTrial]) -> int:
    return sum(t.state in FINISHED for t in trials)


def tune(spec: SearchSpec, quick: bool, out: Path, url: str, name: str, workers: int,
         timeout: float | None, console: Console) -> SearchResult:
    """Run (or resume) the search, refit the best config, test it once, write the report."""
    liveness()  # bad heartbeat settings: one line before anything is written
    datasets: Datasets = {}
    corners = check_data(spec, quick, datasets)
    store = open_search(spec, quick, open_study_storage(out, url), name)
    for cfg in corners:
        pin_search(store, spec, quick, cfg, datasets)
    reclaim(store, store.requeue)
    store.queue_slots(spec.trials)
    done = finished_count(store.trials())
    if done:  # a rerun after a stop, or with more --trials
        console.print(f"{name}: resuming: {done} of {spec.trials} trials done", highlight=False)
    deadline_s = timeout if timeout else math.inf
    with study_bars(console) as bars:
        bar = StudyProgress(name, spec.trials, bars, finished_count, metric="CV accuracy")

        def progress() -> None:
            bar.update(store.trials())

        progress()
        if workers == 1:
            _work(store, spec, quick, out, time.monotonic() + deadline_s, on_done=progress)
        else:
            share_service(corner_config(spec, CORNERS[0], quick))
            run_workers(worker_main, [(url, name, str(out), deadline_s, i)
                                       for i in range(workers)], progress,
                        done=lambda: not store.unfinished())
    result = refit(store, spec, quick, out, datasets)
    left = store.incomplete()
    late = [k for k, why in left.items() if timeout and why == PENDING[0]]
    return replace(result, trials=spec.trials, unstarted=len(late),
                   unfinished=[f"{k}: {why}" for k, why in left.items() if k not in late])


def refit(store: SearchStore, spec: SearchSpec, quick: bool, out: Path, datasets: Datasets
          ) -> SearchResult:
    """Refit the best trial's config on all training data (the data its trials had: pinned),
    test once, write search.md."""
    if not store.trials(TrialState.COMPLETE):
        raise CnnlabError(f"study {store.name}: no trial completed (all pruned or failed); "
                          "allowed: more --trials, or a wider space")
    best = store.study.best_trial
    params = {k: yaml.safe_load(v) if isinstance(v, str) and v[:1] == "[" else v
              for k, v in best.params.items()}
    cfg = with_values(load_config(list(spec.configs),
                                  [*spec.base_overrides(quick), *as_overrides(params)]),
                      {"wandb.group": spec.name, "wandb.job_type": "refit",
                       "wandb.name": "refit best"})
    pin_search(store, spec, quick, cfg, datasets)
    final = run(cfg, out / "refit", refit=True, overwrite=True, datasets=datasets)  # rerun: again
    assert best.value is not None  # the best of the COMPLETE trials
    cv_std = store.cv_std(best)
    result = SearchResult(store.name, best.number, params, best.value,
                          math.nan if cv_std is None else cv_std, store.fold_scores(best),
                          final.number("test_acc"), out)
    files = with_journal(out, write_search_report(store, spec, result, out))
    study_run(cfg, out, search_summary(store, spec, result, files))
    return result
