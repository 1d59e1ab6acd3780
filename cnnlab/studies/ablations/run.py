"""Ablations: every arm × seed of a spec is one Optuna trial that runs the one run path.

All trials (of every spec a command names) are queued in the storage first; workers then run
them through the shared trial loop (``trials.work``), so several processes (``--workers``, other
shells, other machines on PostgreSQL) share one ablation and every arm × seed runs exactly once.
Rerunning the command queues only what is missing: finished trials are kept, and trials a dead
worker left are redone.
Each factor is a categorical parameter (what optuna-dashboard ranks and plots); arm and seed are
user attributes, and the per-epoch validation accuracy is the trial's intermediate values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from cnnlab.config import load_config, to_yaml
from cnnlab.errors import CnnlabError
from cnnlab.metrics import FAILURE, METRICS, RESULT_KEYS
from cnnlab.studies.ablations.dashboard import study_summary
from cnnlab.studies.ablations.hypothesis import safe_name
from cnnlab.studies.ablations.report import write_report
from cnnlab.studies.ablations.results import Results, collect
from cnnlab.studies.ablations.rounds import next_round, planned, reconcile, take_next_look
from cnnlab.studies.ablations.rows import ARM, CONFIGS, FINISHED, KEY, OVERRIDES, SEED, TrialRow, arm_seed
from cnnlab.studies.ablations.spec import REPORT_KEYS, SEED_KEYS, AblationSpec
from cnnlab.studies.engine.progress import StudyProgress, study_bars
from cnnlab.studies.engine.storage import (
    default_url,
    load_study,
    open_storage,
    open_study_storage,
    study_for,
    summary_step,
    with_journal,
)
from cnnlab.studies.engine.trials import Queue, liveness, reclaim, trial_config, work
from cnnlab.studies.engine.workers import run_workers
from cnnlab.studies.statistics.comparisons import Interval
from cnnlab.studies.statistics.sequential import SEED_PLAN
from cnnlab.tracking.runs import share_service, study_run
from cnnlab.training.build import Datasets, check_buildable
from cnnlab.training.run import run


def study_name(spec: AblationSpec, quick: bool) -> str:
    return f"{spec.name}-quick" if quick else spec.name


RESOLVED = "resolved_sha256"  # spec attribute: the digest of every arm's resolved config


def resolved_digest(spec: AblationSpec, quick: bool) -> str:
    """The digest of every arm's config as its trials run it: what the spec names plus the
    content of its ``configs:`` files and of the defaults, so an edited base file (or a relative
    path that finds another file) is a different study."""
    text = "".join(to_yaml(spec.config(arm, 0, quick)) for arm in spec.arms)
    return hashlib.sha256(text.encode()).hexdigest()


def open_ablation(spec: AblationSpec, quick: bool, storage: optuna.storages.BaseStorage
                  ) -> optuna.Study:
    """Create or load the study; its ``spec`` attribute guards against mixing different specs
    or settings (seeds may be added, and what only the report reads may change, between runs;
    a study of cnnlab ≤ 0.3 has no resolved digest yet and gets one)."""
    attrs = {**spec.to_dict(), "preset": "quick" if quick else "full",
             RESOLVED: resolved_digest(spec, quick)}
    study = study_for(storage, study_name(spec, quick), spec.direction, attrs,
                      mutable=SEED_KEYS + REPORT_KEYS, added=(RESOLVED,), grow_only=("seeds",))
    if SEED_PLAN not in study.user_attrs and not study.get_trials(deepcopy=False):
        study.set_user_attr(SEED_PLAN, spec.plan.to_dict())  # fixed before the first trial
    return study


def objective(study: optuna.Study, spec: AblationSpec, out: Path, threads: int
              ) -> Callable[[optuna.Trial], float]:
    """One arm × seed through the run path; its value is the primary metric as the report
    counts it (a failed run's failure value, ``cnnlab.metrics``)."""
    datasets: Datasets = {}

    def one(trial: optuna.Trial) -> float:
        if ARM in trial.user_attrs:
            arm, seed = trial.user_attrs[ARM], trial.user_attrs[SEED]
            for factor, levels in spec.factors.items():
                trial.suggest_categorical(factor, list(levels))
        else:  # queued by cnnlab 0.1, whose parameters were the arm and the seed
            arm = trial.suggest_categorical("arm", [a.name for a in spec.arms])
            seed = trial.suggest_int("seed", 0, 2**31 - 1)
        cfg = load_config(trial.user_attrs[CONFIGS], trial.user_attrs[OVERRIDES])
        trial_config(cfg, study.study_name, arm, threads)
        cfg.wandb.name, cfg.wandb.tags = f"{arm} seed={seed}", [study.study_name, f"seed={seed}"]
        run_dir = out / "trials" / safe_name(arm) / f"seed{seed}"
        # a lost attempt may have finished its folder but not its trial, or left it half-built
        arm_levels = next(a.levels for a in spec.arms if a.name == arm)
        context: dict[str, Any] = {"study": study.study_name, "arm": arm, "seed": seed,
                                   "factor": spec.level_values(arm_levels),  # numbers sort
                                   "factor_level": arm_levels}
        result = run(cfg, run_dir, datasets=datasets, overwrite=True,
                     takeover=True, context=context)
        kept = {name: result.metrics[name] for name in (*RESULT_KEYS, FAILURE)
                if name in result.metrics}
        for name, value in kept.items():
            trial.set_user_attr(name, value)
        for epoch, row in enumerate(result.history):
            if "val/acc" in row:
                trial.report(row["val/acc"], epoch)
        failure = kept.get(FAILURE)
        record = TrialRow(arm, seed, None if failure is None else str(failure), kept, [])
        value = record.value(spec.metric)
        if value is None and record.measured(spec.metric) is not None:  # failed, open range
            value = METRICS[spec.metric].worst
        if value is None:
            raise CnnlabError(f"arm {arm!r} seed {seed}: the run recorded no {spec.metric}")
        return value

    return one


def queue(study: optuna.Study, spec: AblationSpec, quick: bool, out: Path, threads: int = 0
          ) -> Queue:
    """The ablation's queued work (a lost trial is queued again by ``reconcile``)."""
    return Queue(study, objective(study, spec, out, threads),
                 lambda lost: reconcile(study, spec, quick))


def _worker_main(studies: list[tuple[str, str, str]], threads: int = 1) -> None:
    """A worker process: its own storage connections, then the studies' queued trials, the
    first study's first; ``threads`` torch threads per trial (0: the spec's
    ``trainer.threads``, else one). ``studies``: (storage URL, study name, report folder)."""
    storages: dict[str, optuna.storages.BaseStorage] = {}
    queues = []
    for url, name, out in studies:
        study = load_study(storages.setdefault(url, open_storage(url)), name)
        attrs = study.user_attrs["spec"]
        queues.append(queue(study, AblationSpec.from_dict(attrs), attrs["preset"] == "quick",
                            Path(out), threads))
    work(queues)


def arm_lines(spec: AblationSpec, seeds: dict[str, int]
              ) -> Callable[[list[FrozenTrial]], list[str]]:
    """One line per arm as its last planned seed finishes: its metric's mean [95% CI] over
    every seed (failed runs at their failure value), as the report's arms table gives it."""
    reported: set[str] = set()
    bounds = METRICS[spec.metric].bounds

    def lines(trials: list[FrozenTrial]) -> list[str]:
        done: dict[str, dict[int, float | None]] = {}
        fails: dict[str, dict[int, str | None]] = {}
        for t in trials:
            if t.state in FINISHED and KEY in t.user_attrs:
                name, seed = arm_seed(t.user_attrs, t.params)
                done.setdefault(name, {})[seed] = t.value if t.state == TrialState.COMPLETE else None
                fails.setdefault(name, {})[seed] = (t.user_attrs.get(FAILURE) if t.state ==
                                                   TrialState.COMPLETE else "diverged")
        out = []
        for arm in spec.arms:
            values = done.get(arm.name, {})
            if arm.name not in reported and len(values) >= seeds[arm.name]:
                reported.add(arm.name)
                scores = [v for v in values.values() if v is not None]
                failed = sum(f is not None for f in fails.get(arm.name, {}).values())
                note = f", {failed} failed" if failed else ""
                out.append(f"✓ {arm.name}: {spec.metric} {Interval.of(scores, bounds).text()} "
                           f"(95% CI, {len(values)} seeds{note})")
        return out

    return lines


def finished_keys(trials: list[FrozenTrial]) -> int:
    return len({t.user_attrs[KEY] for t in trials if t.state in FINISHED and KEY in t.user_attrs})


def check_architectures(spec: AblationSpec, quick: bool) -> None:
    """Every arm's network fits its data: fail before any trial starts, not in the middle."""
    datasets: Datasets = {}
    for arm in spec.arms:
        cfg = spec.config(arm, 0, quick)
        try:
            check_buildable(cfg, datasets)
        except CnnlabError as err:
            raise CnnlabError(f"spec {spec.name}: arm {arm.name!r}: {err}") from None


@dataclass(frozen=True)
class Job:
    """One spec of an ``ablate`` command: where its report goes and its storage's URL."""

    spec: AblationSpec
    out: Path
    url: str


def jobs_for(specs: Sequence[AblationSpec], out: Path | None, storage: str | None, quick: bool
             ) -> list[Job]:
    """Where each spec's study lives: ``out`` itself for one spec, else ``out``/<study name>
    (default reports/); its storage ``storage`` or the journal in that folder."""
    root = out or Path("reports")
    folders = [root / study_name(s, quick) if out is None or len(specs) > 1 else root for s in specs]
    return [Job(s, f, storage or default_url(f)) for s, f in zip(specs, folders, strict=True)]


def _files_and_summary(study: optuna.Study, final: Results, job: Job, quick: bool) -> None:
    """A finished ablation's report files and its W&B summary run."""
    write_report(final, job.out)
    files = with_journal(job.out, [job.out / "report.md", job.out / "results.csv",
                                   *sorted(job.out.glob("*.png"))])
    study_run(job.spec.config(job.spec.arms[0], 0, quick), job.out,
              study_summary(final, files, summary_step(study)))


def ablate(jobs: Sequence[Job], quick: bool, workers: int, console: Console,
           finish: Callable[[Callable[[], object]], object] = lambda write: write(),
           on_report: Callable[[Job, Results], None] = lambda job, report: None
           ) -> list[Results]:
    """Run (or resume) ablations, then write each one's report and a W&B summary run.

    Every spec is checked and every study's trials queued before the first trial starts; one
    set of workers then runs them all, the first spec's first: a worker with nothing left in
    one spec takes the next spec's trials while the others finish theirs, so no core idles at
    a spec's end. With ``spec.auto`` a spec runs in rounds: when a round ends, the arms of
    undecided comparisons get ``seed_step`` more seeds (up to ``max_seeds``), queued while the
    workers go on. The rounds live in the storage (queued trials), so a rerun after a crash goes
    on where it stopped. As each spec ends, ``on_report`` gets its report and ``finish`` runs
    its report files and W&B summary run (now, by default; the CLI hands them to one thread so
    the workers go on meanwhile, which also keeps matplotlib's pyplot to one thread at a time);
    each round's report goes through ``finish`` too. Returns the reports in the order of
    ``jobs``."""
    liveness()  # bad heartbeat settings: one line before anything is written
    for job in jobs:
        check_architectures(job.spec, quick)
    studies = [open_ablation(job.spec, quick, open_study_storage(job.out, job.url))
               for job in jobs]
    for study, job in zip(studies, jobs, strict=True):
        reclaim(study, lambda lost: None)  # reconcile, next, queues their work again
        reconcile(study, job.spec, quick)
    for study, job in zip(studies, jobs, strict=True):
        done = finished_keys(study.get_trials(deepcopy=False))
        if done:  # a rerun after a stop (or a finished study, reported again)
            console.print(f"{study.study_name}: resuming: {done} of "
                          f"{sum(planned(study, job.spec).values())} trials done", highlight=False)
    reports: dict[int, Results] = {}
    with study_bars(console) as bars:
        bar = []
        for study, job in zip(studies, jobs, strict=True):
            seeds = planned(study, job.spec)
            bar.append(StudyProgress(study.study_name, sum(seeds.values()), bars, finished_keys,
                                     arm_lines(job.spec, seeds), job.spec.metric))

        def advance(i: int) -> None:
            """Show spec i's progress; once none of its trials is queued or running, queue its
            next round, or report it."""
            study, job = studies[i], jobs[i]
            trials = study.get_trials(deepcopy=False)
            bar[i].update(trials)
            if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials):
                return
            take_next_look(study, job.spec)
            report = collect(study)
            more = next_round(report, planned(study, job.spec)) if job.spec.auto else {}
            if more:
                finish(partial(write_report, report, job.out))  # a crash in the next round keeps it
                reconcile(study, job.spec, quick, more)
                seeds = planned(study, job.spec)
                bar[i].next_round(sum(seeds.values()), arm_lines(job.spec, seeds))
                look = report.looks[-1]
                console.print(f"{study.study_name}: look {len(report.looks)} at {look.seeds} "
                              f"seeds (α {look.alpha:.3g}): {len(report.undecided)} of "
                              f"{len(report.checks)} confirmatory comparisons undecided; adding "
                              f"seeds to {len(more)} arms (up to {job.spec.max_seeds})")
                return
            reports[i] = report
            on_report(job, report)
            finish(partial(_files_and_summary, study, report, job, quick))

        def progress() -> None:
            for i in range(len(jobs)):
                if i not in reports:
                    advance(i)

        progress()
        while open_ := [i for i in range(len(jobs)) if i not in reports]:
            if workers == 1:
                work([queue(studies[i], jobs[i].spec, quick, jobs[i].out) for i in open_],
                     on_done=progress)
            else:
                first = jobs[open_[0]].spec
                share_service(first.config(first.arms[0], 0, quick))
                todo = [(jobs[i].url, studies[i].study_name, str(jobs[i].out)) for i in open_]
                run_workers(_worker_main, [(todo,)] * workers, progress)
            progress()
    return [reports[i] for i in range(len(jobs))]
