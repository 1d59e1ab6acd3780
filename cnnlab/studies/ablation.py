"""Ablations: every arm × seed of a spec is one Optuna trial that runs the one run path.

All trials are queued in the storage first; workers then run them through the shared trial loop
(``trials.work``), so several processes (``--workers``, other shells, other machines on
PostgreSQL) share one ablation and every arm × seed runs exactly once. Rerunning the command
queues only what is missing: finished trials are kept, and trials a dead worker left are redone.
Each factor is a categorical parameter (what optuna-dashboard ranks and plots); arm and seed are
user attributes, and the per-epoch validation accuracy is the trial's intermediate values.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from cnnlab.config import load_config
from cnnlab.data.sources import ImageData, load_cached
from cnnlab.errors import CnnlabError
from cnnlab.models.convnet import feature_shape
from cnnlab.studies.comparisons import Interval
from cnnlab.studies.report import (
    SEEDS_ATTR,
    Report,
    arm_seed,
    collect,
    study_summary,
    write_report,
)
from cnnlab.studies.spec import METRICS, REPORT_KEYS, SEED_KEYS, AblationSpec, safe_name
from cnnlab.studies.storage import (
    load_study,
    open_storage,
    open_study_storage,
    study_for,
    summary_step,
    with_journal,
)
from cnnlab.studies.trials import (
    ARM,
    CONFIGS,
    FINISHED,
    KEY,
    OVERRIDES,
    RESULT_KEYS,
    SEED,
    StudyProgress,
    liveness,
    reclaim,
    run_workers,
    work,
)
from cnnlab.tracking import WANDB_MODULES, share_service, study_run
from cnnlab.training.run import run


def study_name(spec: AblationSpec, quick: bool) -> str:
    return f"{spec.name}-quick" if quick else spec.name


def trial_key(arm: str, seed: int) -> str:
    return f"{arm} | seed={seed}"


def open_ablation(spec: AblationSpec, quick: bool, storage: optuna.storages.BaseStorage
                  ) -> optuna.Study:
    """Create or load the study; its ``spec`` attribute guards against mixing different specs
    (seeds may be added, and what only the report reads may change, between runs)."""
    attrs = {**spec.to_dict(), "preset": "quick" if quick else "full"}
    study = study_for(storage, study_name(spec, quick), spec.direction, attrs,
                      mutable=SEED_KEYS + REPORT_KEYS)
    if spec.looks > study.user_attrs.get(SEEDS_ATTR, 1):  # α per look: 0.05 / most looks planned
        study.set_user_attr(SEEDS_ATTR, spec.looks)
    return study


PLAN = "planned_seeds"  # study attribute: seeds per arm of the latest round, stored before its trials


def planned(study: optuna.Study, spec: AblationSpec) -> dict[str, int]:
    """Seeds per arm: the spec's, or more where earlier rounds planned or queued more (any
    state). A round's plan is stored in one record before its trials are queued, so a kill
    half-way through queueing resumes the whole round, not a part of it."""
    stored = study.user_attrs.get(PLAN, {})
    seeds = {arm.name: max(spec.seeds, stored.get(arm.name, 0)) for arm in spec.arms}
    for t in study.get_trials(deepcopy=False):
        if KEY in t.user_attrs:
            arm, seed = arm_seed(t.user_attrs, t.params)
            if arm in seeds:
                seeds[arm] = max(seeds[arm], seed + 1)
    return seeds


def reconcile(study: optuna.Study, spec: AblationSpec, quick: bool,
              more: dict[str, int] | None = None) -> int:
    """Queue every planned arm × seed (``more``: raise an arm's count) that is not finished,
    queued or running; returns how many."""
    taken = {t.user_attrs.get(KEY) for t in study.get_trials(deepcopy=False)
             if t.state in (*FINISHED, TrialState.WAITING, TrialState.RUNNING)}
    seeds = planned(study, spec)
    for arm, count in (more or {}).items():
        seeds[arm] = max(seeds[arm], count)
    if more:
        study.set_user_attr(PLAN, seeds)
    queued = 0
    for arm in spec.arms:
        for seed in range(seeds[arm.name]):
            key = trial_key(arm.name, seed)
            if key not in taken:
                study.enqueue_trial(dict(arm.levels), user_attrs={
                    KEY: key, ARM: arm.name, SEED: seed, CONFIGS: list(spec.configs),
                    OVERRIDES: spec.trial_overrides(arm, seed, quick)})
                queued += 1
    return queued


def objective(study: optuna.Study, spec: AblationSpec, out: Path, threads: int
              ) -> Callable[[optuna.Trial], float]:
    """One arm × seed: its config through the run path; diverged runs are pruned."""
    datasets: dict[tuple[Any, ...], ImageData] = {}

    def one(trial: optuna.Trial) -> float:
        if ARM in trial.user_attrs:
            arm, seed = trial.user_attrs[ARM], trial.user_attrs[SEED]
            for factor, levels in spec.factors.items():
                trial.suggest_categorical(factor, list(levels))
        else:  # queued by cnnlab 0.1, whose parameters were the arm and the seed
            arm = trial.suggest_categorical("arm", [a.name for a in spec.arms])
            seed = trial.suggest_int("seed", 0, 2**31 - 1)
        cfg = load_config(trial.user_attrs[CONFIGS], trial.user_attrs[OVERRIDES])
        cfg.wandb.group, cfg.wandb.job_type = study.study_name, arm
        cfg.wandb.name, cfg.wandb.tags = f"{arm} seed={seed}", [study.study_name, f"seed={seed}"]
        cfg.trainer.images = False  # the report draws the study's curves
        cfg.trainer.progress_bar = False  # the study shows one
        cfg.wandb.log_model = False  # a checkpoint per arm × seed: too many to upload
        if threads or not cfg.trainer.threads:  # results must not depend on the worker count
            cfg.trainer.threads = threads or 1  # or the load: torch's sums vary with threads
        run_dir = out / "trials" / safe_name(arm) / f"seed{seed}"
        # a lost attempt may have finished its folder but not its trial, or left it half-built
        levels = next(a.levels for a in spec.arms if a.name == arm)
        context = {"study": study.study_name, "arm": arm, "seed": seed, "factor": levels}
        result = run(cfg, run_dir, data=load_cached(cfg.data, datasets), overwrite=True,
                     takeover=True, context=context)
        for name in RESULT_KEYS:
            if name in result.metrics:
                trial.set_user_attr(name, result.metrics[name])
        for epoch, row in enumerate(result.history):
            if "val/acc" in row:
                trial.report(row["val/acc"], epoch)
        if result.metrics["diverged"]:  # its metric means nothing; the report lists it apart
            raise optuna.TrialPruned(f"diverged: training loss {result.metrics['train_loss']:.4g} "
                                     f"in epoch {result.metrics['epochs']}")
        return result.metrics[spec.metric]

    return one


def work_on(study: optuna.Study, spec: AblationSpec, quick: bool, out: Path, threads: int = 0,
            on_done: Callable[[], None] = lambda: None) -> None:
    """This process's share of the ablation (a lost trial is queued again by ``reconcile``)."""
    work(study, objective(study, spec, out, threads),
         lambda lost: reconcile(study, spec, quick), on_done)


def _worker_main(url: str, name: str, out: str, threads: int = 1) -> None:
    """A spawned worker process: its own storage connection, ``threads`` torch threads per trial
    (0: the spec's ``trainer.threads``, else one)."""
    study = load_study(open_storage(url), name)
    attrs = study.user_attrs["spec"]
    spec = AblationSpec.from_dict(attrs)
    work_on(study, spec, attrs["preset"] == "quick", Path(out), threads=threads)


def arm_lines(spec: AblationSpec, seeds: dict[str, int]
              ) -> Callable[[list[FrozenTrial]], list[str]]:
    """One line per arm as its last planned seed finishes: its metric's mean [CI]."""
    reported: set[str] = set()
    bounds = METRICS[spec.metric].bounds

    def lines(trials: list[FrozenTrial]) -> list[str]:
        done: dict[str, dict[int, float | None]] = {}
        for t in trials:
            if t.state in FINISHED and KEY in t.user_attrs:
                arm, seed = arm_seed(t.user_attrs, t.params)
                done.setdefault(arm, {})[seed] = t.value if t.state == TrialState.COMPLETE else None
        out = []
        for arm in spec.arms:
            values = done.get(arm.name, {})
            if arm.name not in reported and len(values) >= seeds[arm.name]:
                reported.add(arm.name)
                scores = [v for v in values.values() if v is not None]
                diverged = f", {len(values) - len(scores)} diverged" if len(scores) < len(values) else ""
                out.append(f"✓ {arm.name}: {spec.metric} {Interval.of(scores, bounds).text()} "
                           f"({len(scores)} seeds{diverged})")
        return out

    return lines


def finished_keys(trials: list[FrozenTrial]) -> int:
    return len({t.user_attrs[KEY] for t in trials if t.state in FINISHED and KEY in t.user_attrs})


def check_architectures(spec: AblationSpec, quick: bool) -> None:
    """Every arm's network fits its data: fail before any trial starts, not in the middle."""
    datasets: dict[tuple[Any, ...], ImageData] = {}
    for arm in spec.arms:
        cfg = spec.config(arm, 0, quick)
        try:
            feature_shape(cfg.model, load_cached(cfg.data, datasets).input_shape)
        except CnnlabError as err:
            raise CnnlabError(f"spec {spec.name}: arm {arm.name!r}: {err}") from None


def next_round(report: Report, seeds: dict[str, int]) -> dict[str, int]:
    """More seeds for both arms of every undecided comparison, up to the spec's maximum."""
    spec, more = report.spec, {}
    for c in report.undecided:
        count = min(spec.max_seeds, max(seeds[c.arm], seeds[c.reference]) + spec.seed_step)
        for arm in (c.arm, c.reference):
            if count > seeds[arm]:
                more[arm] = max(more.get(arm, 0), count)
    return more


def ablate(spec: AblationSpec, quick: bool, out: Path, url: str, workers: int,
           console: Console, finish: Callable[[Callable[[], None]], object] = lambda job: job()
           ) -> Report:
    """Run (or resume) an ablation, then write its report and a W&B summary run.

    With ``spec.auto`` it runs in rounds: after each, the arms of undecided comparisons get
    ``seed_step`` more seeds (up to ``max_seeds``). The rounds live in the storage (queued
    trials), so a rerun after a crash goes on where it stopped. ``finish`` runs the last
    round's report files and W&B summary run (now, by default; the CLI hands them to a thread
    so the next spec's workers start meanwhile); the returned report is the same either way."""
    liveness()  # bad heartbeat settings: one line before anything is written
    check_architectures(spec, quick)
    study = open_ablation(spec, quick, open_study_storage(out, url))
    reclaim(study, lambda lost: None)  # reconcile, next, queues their work again
    more: dict[str, int] = {}
    while True:
        reconcile(study, spec, quick, more)
        seeds = planned(study, spec)
        with StudyProgress(study.study_name, sum(seeds.values()), console, finished_keys,
                           arm_lines(spec, seeds), spec.metric) as bar:
            def progress() -> None:
                bar.update(study.get_trials(deepcopy=False))

            progress()
            if workers == 1:
                work_on(study, spec, quick, out, on_done=progress)
            else:
                share_service(spec.config(spec.arms[0], 0, quick))
                run_workers(_worker_main, [(url, study.study_name, str(out))] * workers, progress,
                            preload=WANDB_MODULES)
        report = collect(study)
        more = next_round(report, seeds) if spec.auto and not report.running else {}
        if not more:
            break
        write_report(study, out)  # each round's report: a crash in the next leaves this one
        console.print(f"{study.study_name}: {len(report.undecided)} comparisons undecided; "
                      f"adding seeds to {len(more)} arms (up to {spec.max_seeds})")
    base = spec.config(spec.arms[0], 0, quick)

    def files_and_summary() -> None:
        final = write_report(study, out)
        files = with_journal(out, [out / "report.md", out / "results.csv",
                                   *sorted(out.glob("*.png"))])
        study_run(base, out, study_summary(final, files, summary_step(study)))

    finish(files_and_summary)
    return report
