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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from rich.console import Console

from cnnlab.config import load_config
from cnnlab.data.sources import Datasets, load_cached
from cnnlab.errors import CnnlabError
from cnnlab.metrics import METRICS
from cnnlab.outputs.files import REPORTS, refuse_links
from cnnlab.studies.ablations.dashboard import study_summary
from cnnlab.studies.ablations.report import write_report
from cnnlab.studies.ablations.results import Results, collect, next_round
from cnnlab.studies.ablations.spec import AblationSpec
from cnnlab.studies.ablations.store import AblationStore, study_name
from cnnlab.studies.engine.progress import StudyProgress, study_bars
from cnnlab.studies.engine.storage import default_url, open_study_storage, with_journal
from cnnlab.studies.engine.trials import Queue, liveness, reclaim, trial_config, work
from cnnlab.studies.engine.workers import run_workers
from cnnlab.studies.specs import safe_name
from cnnlab.studies.statistics.comparisons import Interval
from cnnlab.tracking.runs import share_service, study_run
from cnnlab.training.build import check_buildable
from cnnlab.training.run import run


def objective(store: AblationStore, spec: AblationSpec, out: Path, threads: int
              ) -> Callable[[optuna.Trial], float]:
    """One arm × seed through the run path; its value is the primary metric as the report
    counts it (a failed run's failure value, ``cnnlab.metrics``)."""
    datasets: Datasets = {}

    def one(trial: optuna.Trial) -> float:
        arm, seed, configs, overrides = store.work(trial, spec)
        cfg = trial_config(load_config(configs, overrides), store.name, arm.name, threads,
                           name=f"{arm.name} seed={seed}", tags=[store.name, f"seed={seed}"])
        data = load_cached(cfg.data, datasets).fingerprint
        store.pin(*store.pins(spec, store.quick, {arm.name: data}))  # as pinned, or stop
        run_dir = out / "trials" / safe_name(arm.name) / f"seed{seed}"
        refuse_links(out, run_dir)
        # a lost attempt may have finished its folder but not its trial, or left it half-built
        context: dict[str, Any] = {"study": store.name, "arm": arm.name, "seed": seed,
                                   "factor": spec.level_values(arm.levels),  # numbers sort
                                   "factor_level": arm.levels}
        result = run(cfg, run_dir, datasets=datasets, overwrite=True,
                     takeover=True, context=context)
        record = store.record(trial, result.metrics, result.history)
        value = record.value(spec.metric)
        if value is None and record.measured(spec.metric) is not None:  # failed, open range
            value = METRICS[spec.metric].worst
        if value is None:
            raise CnnlabError(f"arm {arm.name!r} seed {seed}: the run recorded no {spec.metric}")
        return value

    return one


def queue(store: AblationStore, spec: AblationSpec, quick: bool, out: Path, threads: int = 0
          ) -> Queue:
    """The ablation's queued work (a lost trial is queued again by ``reconcile``)."""
    return Queue(store, objective(store, spec, out, threads),
                 lambda lost: store.reconcile(spec, quick))


def worker_main(studies: list[tuple[str, str, str]], threads: int = 1) -> None:
    """A worker process: its own storage connections, then the studies' queued trials, the
    first study's first; ``threads`` torch threads per trial (0: the spec's
    ``trainer.threads``, else one). ``studies``: (storage URL, study name, report folder)."""
    queues = []
    for url, name, out in studies:
        store = AblationStore.attach(url, name)
        queues.append(queue(store, store.spec, store.quick, Path(out), threads))
    work(queues)


def arm_lines(store: AblationStore, spec: AblationSpec, seeds: dict[str, int]
              ) -> Callable[[list[FrozenTrial]], list[str]]:
    """One line per arm as its last planned seed finishes: its metric's mean [95% CI] over
    every seed (failed runs at their failure value), as the report's arms table gives it."""
    reported: set[str] = set()
    bounds = METRICS[spec.metric].bounds

    def lines(trials: list[FrozenTrial]) -> list[str]:
        done = store.outcomes(trials)
        out = []
        for arm in spec.arms:
            values = done.get(arm.name, {})
            if arm.name not in reported and len(values) >= seeds[arm.name]:
                reported.add(arm.name)
                scores = [v for v, _ in values.values() if v is not None]
                failed = sum(f for _, f in values.values())
                note = f", {failed} failed" if failed else ""
                out.append(f"• {arm.name}: {spec.metric} {Interval.of(scores, bounds).text()} "
                           f"(95% CI, {len(values)} seeds{note})")
        return out

    return lines


def check_arms(spec: AblationSpec, quick: bool) -> dict[str, str]:
    """Every arm's network fits its data (fail before any trial starts, not in the middle);
    returns each arm's data fingerprint, each dataset read and hashed once."""
    datasets: Datasets = {}
    data = {}
    for arm in spec.arms:
        cfg = spec.config(arm, 0, quick)
        try:
            check_buildable(cfg, datasets)
        except CnnlabError as err:
            raise CnnlabError(f"spec {spec.name}: arm {arm.name!r}: {err}") from None
        data[arm.name] = load_cached(cfg.data, datasets).fingerprint
    return data


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
    root = out or REPORTS
    folders = [root / study_name(s, quick) if out is None or len(specs) > 1 else root for s in specs]
    return [Job(s, f, storage or default_url(f)) for s, f in zip(specs, folders, strict=True)]


def _files_and_summary(store: AblationStore, final: Results, job: Job, quick: bool) -> None:
    """A finished ablation's report files and its W&B summary run."""
    write_report(final, job.out)
    files = with_journal(job.out, [job.out / "report.md", job.out / "results.csv",
                                   *sorted(job.out.glob("*.png"))])
    study_run(job.spec.config(job.spec.arms[0], 0, quick), job.out,
              study_summary(final, files, store.summary_step()))


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
    data = [check_arms(job.spec, quick) for job in jobs]
    stores = [AblationStore.open(job.spec, quick, open_study_storage(job.out, job.url), pins)
              for job, pins in zip(jobs, data, strict=True)]
    for store, job in zip(stores, jobs, strict=True):
        reclaim(store, lambda lost: None)  # reconcile, next, queues their work again
        store.reconcile(job.spec, quick)
    for store, job in zip(stores, jobs, strict=True):
        done = store.finished_keys()
        if done:  # a rerun after a stop (or a finished study, reported again)
            console.print(f"{store.name}: resuming: {done} of "
                          f"{sum(store.planned(job.spec).values())} trials done", highlight=False)
    reports: dict[int, Results] = {}
    with study_bars(console) as bars:
        bar = []
        for store, job in zip(stores, jobs, strict=True):
            seeds = store.planned(job.spec)
            bar.append(StudyProgress(store.name, sum(seeds.values()), bars, store.finished_keys,
                                     arm_lines(store, job.spec, seeds), job.spec.metric))

        def advance(i: int) -> None:
            """Show spec i's progress; once none of its trials is queued or running, queue its
            next round, or report it."""
            store, job = stores[i], jobs[i]
            bar[i].update(store.trials())
            if store.unfinished():
                return
            store.take_next_look(job.spec)
            report = collect(store)
            more = next_round(report, store.planned(job.spec)) if job.spec.auto else {}
            if more:
                finish(partial(write_report, report, job.out))  # a crash in the next round keeps it
                store.reconcile(job.spec, quick, more)
                seeds = store.planned(job.spec)
                bar[i].next_round(sum(seeds.values()), arm_lines(store, job.spec, seeds))
                look = report.looks[-1]
                console.print(f"{store.name}: look {len(report.looks)} at {look.seeds} "
                              f"seeds (α {look.alpha:.3g}): {len(report.undecided)} of "
                              f"{len(report.checks)} confirmatory comparisons undecided; adding "
                              f"seeds to {len(more)} arms (up to {job.spec.max_seeds})")
                return
            reports[i] = report
            on_report(job, report)
            finish(partial(_files_and_summary, store, report, job, quick))

        def progress() -> None:
            for i in range(len(jobs)):
                if i not in reports:
                    advance(i)

        progress()
        while open_ := [i for i in range(len(jobs)) if i not in reports]:
            if workers == 1:
                work([queue(stores[i], jobs[i].spec, quick, jobs[i].out) for i in open_],
                     on_done=progress)
            else:
                first = jobs[open_[0]].spec
                share_service(first.config(first.arms[0], 0, quick))
                todo = [(jobs[i].url, stores[i].name, str(jobs[i].out)) for i in open_]
                run_workers(worker_main, [(todo,)] * workers, progress,
                            done=lambda: not any(stores[i].unfinished() for i in open_))
            progress()
    return [reports[i] for i in range(len(jobs))]
