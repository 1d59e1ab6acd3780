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
from pathlib import Path

import lightning as L
import numpy as np
import optuna
import yaml
from lightning.pytorch.callbacks import Callback
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from cnnlab.config import load_config
from cnnlab.errors import CnnlabError
from cnnlab.studies.ablations.rows import CV_STD, FINISHED, FOLD_EPOCHS, FOLD_SCORES, KEY
from cnnlab.studies.engine.progress import StudyProgress, study_bars
from cnnlab.studies.engine.storage import (
    load_study,
    open_storage,
    open_study_storage,
    study_for,
    summary_step,
    with_journal,
)
from cnnlab.studies.engine.trials import Queue, liveness, reclaim, requeue_same, trial_config, work
from cnnlab.studies.engine.workers import run_workers
from cnnlab.studies.searches.report import SearchResult, search_summary, write_search_report
from cnnlab.studies.searches.spec import (
    CORNERS,
    PRUNERS,
    SAMPLERS,
    SearchSpec,
    as_overrides,
    corner_config,
    suggest,
)
from cnnlab.tracking.runs import share_service, small_run, study_run
from cnnlab.training.build import Datasets, check_buildable
from cnnlab.training.run import run


def check_data(spec: SearchSpec, quick: bool) -> None:
    """The dataset loads, splits into ``spec.folds`` folds and fits the network at both ends of
    the space: fail before the study exists, not in every trial."""
    datasets: Datasets = {}
    for corner in CORNERS:
        cfg = corner_config(spec, corner, quick)
        try:
            check_buildable(cfg, datasets, fold=(0, spec.folds))
        except CnnlabError as err:
            raise CnnlabError(f"spec {spec.name}: space at its {corner} end: {err}") from None


class EpochPruning(Callback):
    """Reports fold 0's validation accuracy after each epoch and, when the pruner says so, stops
    the fold (gracefully: the fold's run and its W&B record stay complete up to that epoch)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.stopped_at: int | None = None

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        score = trainer.callback_metrics.get("val/acc")
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


def cross_validate(spec: SearchSpec, quick: bool, out: Path, threads: int
                   ) -> Callable[[optuna.Trial], float]:
    """The objective: train the trial's config on each fold, reporting fold 0's epochs and then
    each fold so it can be pruned; a diverged fold prunes the trial."""
    datasets: Datasets = {}
    paired = spec.pruner["name"] == "wilcoxon"  # fold scores as paired instances
    first_fold_steps = max_epochs(spec, quick)

    def one(trial: optuna.Trial) -> float:
        overrides = [*spec.base_overrides(quick), *as_overrides(suggest(trial, spec.space))]
        cfg = load_config(list(spec.configs), overrides)
        trial_config(cfg, spec.name, "fold", threads)
        scores: list[float] = []
        epochs, state = 0, "failed"
        try:
            for fold in range(spec.folds):
                cfg.wandb.name = f"trial {trial.number} fold {fold}"
                cfg.wandb.tags = [spec.name, f"trial={trial.number}", f"fold={fold}"]
                pruning = [EpochPruning(trial)] if fold == 0 and not paired else []
                result = run(cfg, out / "trials" / f"{trial.number:04d}" / f"fold{fold}",
                             fold=(fold, spec.folds), datasets=datasets, overwrite=True, takeover=True,
                             context={"study": trial.study.study_name, "trial": trial.number,
                                      "fold": fold}, callbacks=pruning)
                epochs += int(result.number("epochs"))
                trial.set_user_attr(FOLD_EPOCHS, epochs)
                if result.metrics["diverged"]:
                    state = "pruned"
                    raise optuna.TrialPruned(f"diverged in fold {fold}: training loss "
                                             f"{result.metrics['train_loss']:.4g}")
                if pruning and pruning[0].stopped_at is not None:
                    state = "pruned"
                    raise optuna.TrialPruned(
                        f"pruned in fold 0 after epoch {pruning[0].stopped_at} (validation "
                        f"accuracy {result.history[-1]['val/acc']:.4f})")
                scores.append(result.number("val_acc"))
                trial.set_user_attr(FOLD_SCORES, scores)
                if paired:
                    trial.report(scores[-1], fold)
                elif fold:
                    trial.report(statistics.mean(scores), first_fold_steps - 1 + fold)
                if (paired or fold) and trial.should_prune():
                    state = "pruned"
                    raise optuna.TrialPruned(f"pruned after fold {fold} (CV mean so far "
                                             f"{statistics.mean(scores):.4f})")
            trial.set_user_attr(CV_STD, statistics.stdev(scores))
            state = "complete"
            return statistics.mean(scores)
        finally:  # one W&B run per trial: its parameters, folds and outcome, beside the folds'
            cfg.wandb.job_type, cfg.wandb.tags = "trial", [spec.name, f"trial={trial.number}"]
            small_run(cfg, out / "trials" / f"{trial.number:04d}", "trial",
                      {"state": state, "fold_scores": scores, "folds_done": len(scores),
                       "fold_epochs": epochs, "cv_mean": statistics.mean(scores) if scores else None,
                       "cv_std": statistics.stdev(scores) if len(scores) > 1 else None},
                      name=f"trial {trial.number}",
                      context={"study": trial.study.study_name, "trial": trial.number,
                               "params": dict(trial.params)})

    return one


def queue_slots(study: optuna.Study, target: int) -> int:
    """Queue empty slots until finished, running and queued trials number ``target``; returns
    how many. Failed trials leave their slot free, so a rerun tries again."""
    taken = {t.user_attrs.get(KEY, f"#{t.number}") for t in study.get_trials(deepcopy=False)
             if t.state in (*FINISHED, TrialState.RUNNING, TrialState.WAITING)}
    free = (f"slot {i}" for i in range(10**9) if f"slot {i}" not in taken)
    missing = max(target - len(taken), 0)
    for _ in range(missing):
        study.enqueue_trial({}, user_attrs={KEY: next(free)})
    return missing


def open_search(spec: SearchSpec, quick: bool, storage: optuna.storages.BaseStorage, name: str,
                worker: int = 0) -> optuna.Study:
    """The study with its sampler and pruner. The sampler's seed comes from the spec's, the worker
    and the number of configurations already drawn (trials with parameters, whatever their
    state): a resumed or extended search goes on exploring (its history is the storage) instead
    of proposing the configurations it already ran. Counting every stored trial repeated one:
    slots are queued up front, so a run killed before it queued or lost anything left the count
    as it found it, and the next run drew its first configuration again."""
    attrs = {**spec.to_dict(), "preset": "quick" if quick else "full"}
    study = study_for(storage, name, "maximize", attrs)  # created once; guards against another spec
    drawn = sum(bool(t.params) for t in study.get_trials(deepcopy=False))
    seed = np.random.SeedSequence([spec.sampler.get("seed", 0), worker, drawn]).generate_state(1)[0]
    sampler = SAMPLERS[spec.sampler["name"]](int(seed))
    pruner = PRUNERS[spec.pruner["name"]](spec.pruner, report_steps(spec, quick))
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def _worker_main(url: str, name: str, out: str, deadline_s: float, index: int) -> None:
    study = load_study(open_storage(url), name)
    attrs = study.user_attrs["spec"]
    spec = SearchSpec.from_dict(attrs)
    quick = attrs["preset"] == "quick"
    study = open_search(spec, quick, open_storage(url), name, worker=index)
    _work(study, spec, quick, Path(out), time.monotonic() + deadline_s, threads=1)


def _work(study: optuna.Study, spec: SearchSpec, quick: bool, out: Path, deadline: float,
          threads: int = 0, on_done: Callable[[], None] = lambda: None) -> None:
    """This process's share of the queued slots; after ``deadline`` it starts none (the slots
    left wait for a rerun)."""
    work([Queue(study, cross_validate(spec, quick, out, threads), requeue_same(study))], on_done,
         stop=lambda: time.monotonic() >= deadline)


def finished_count(trials: list[FrozenTrial]) -> int:
    return sum(t.state in FINISHED for t in trials)


def tune(spec: SearchSpec, quick: bool, out: Path, url: str, name: str, workers: int,
         timeout: float | None, console: Console) -> SearchResult:
    """Run (or resume) the search, refit the best config, test it once, write the report."""
    liveness()  # bad heartbeat settings: one line before anything is written
    check_data(spec, quick)
    study = open_search(spec, quick, open_study_storage(out, url), name)
    reclaim(study, requeue_same(study))
    queue_slots(study, spec.trials)
    done = finished_count(study.get_trials(deepcopy=False))
    if done:  # a rerun after a stop, or with more --trials
        console.print(f"{name}: resuming: {done} of {spec.trials} trials done", highlight=False)
    deadline_s = timeout if timeout else math.inf
    with study_bars(console) as bars:
        bar = StudyProgress(name, spec.trials, bars, finished_count, metric="CV accuracy")

        def progress() -> None:
            bar.update(study.get_trials(deepcopy=False))

        progress()
        if workers == 1:
            _work(study, spec, quick, out, time.monotonic() + deadline_s, on_done=progress)
        else:
            share_service(corner_config(spec, CORNERS[0], quick))
            run_workers(_worker_main, [(url, name, str(out), deadline_s, i)
                                       for i in range(workers)], progress)
    return refit(study, spec, quick, out)


def refit(study: optuna.Study, spec: SearchSpec, quick: bool, out: Path) -> SearchResult:
    """Refit the best trial's config on all training data, test once, write search.md."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise CnnlabError(f"study {study.study_name}: no trial completed (all pruned or failed); "
                          "allowed: more --trials, or a wider space")
    best = study.best_trial
    params = {k: yaml.safe_load(v) if isinstance(v, str) and v[:1] == "[" else v
              for k, v in best.params.items()}
    cfg = load_config(list(spec.configs), [*spec.base_overrides(quick), *as_overrides(params)])
    cfg.wandb.group, cfg.wandb.job_type, cfg.wandb.name = spec.name, "refit", "refit best"
    final = run(cfg, out / "refit", refit=True, overwrite=True)  # a rerun refits the best
    assert best.value is not None  # the best of the COMPLETE trials
    result = SearchResult(study.study_name, best.number, params, best.value,
                          best.user_attrs.get(CV_STD, math.nan),
                          best.user_attrs.get(FOLD_SCORES, []), final.number("test_acc"), out)
    files = with_journal(out, write_search_report(study, spec, result, out))
    study_run(cfg, out, search_summary(study, spec, result, files, summary_step(study)))
    return result
