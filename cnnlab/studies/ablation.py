"""Ablations: every arm × seed of a spec is one Optuna trial that runs the one run path.

All trials are queued in the storage first; each worker then pops queued trials until none are
left, so several processes (``--workers``, other shells, other machines on PostgreSQL) share one
ablation and every arm × seed runs exactly once. Rerunning the command queues only what is
missing: finished trials are kept, and trials left RUNNING by a dead worker are failed and redone.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from cnnlab.data.sources import ImageData, load_cached
from cnnlab.errors import CnnlabError
from cnnlab.files import owner_id
from cnnlab.studies.spec import AblationSpec, safe_name
from cnnlab.studies.storage import (
    is_dead_local_worker,
    load_study,
    open_storage,
    open_study_storage,
    study_for,
)

RESULT_KEYS = ("test_acc", "val_acc", "train_loss", "test_loss", "fit_seconds", "epochs")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # pruned: the run diverged; not redone


@dataclass(frozen=True)
class Finished:
    """A trial just finished (or failed) by this process."""

    arm: str
    seed: int
    value: float | None
    error: str | None = None


def study_name(spec: AblationSpec, quick: bool) -> str:
    return f"{spec.name}-quick" if quick else spec.name


def trial_key(arm: str, seed: int) -> str:
    return f"{arm} | seed={seed}"


def open_ablation(spec: AblationSpec, quick: bool, storage: optuna.storages.BaseStorage
                  ) -> optuna.Study:
    """Create or load the study; its ``spec`` attribute guards against mixing different specs."""
    attrs = {**spec.to_dict(), "preset": "quick" if quick else "full"}
    attrs.pop("seeds")  # more seeds may be added to a study later
    return study_for(storage, study_name(spec, quick), spec.direction, attrs)


def reconcile(study: optuna.Study, spec: AblationSpec, quick: bool) -> int:
    """Queue every arm × seed that is not finished, queued or running; returns how many."""
    taken = set()
    for t in study.get_trials(deepcopy=False):
        key = t.user_attrs.get("key")
        if t.state == TrialState.RUNNING and is_dead_local_worker(t.user_attrs.get("worker")):
            study.tell(t.number, state=TrialState.FAIL)  # its worker was killed
        elif t.state in (*FINISHED, TrialState.WAITING, TrialState.RUNNING):
            taken.add(key)
    queued = 0
    for arm in spec.arms:
        for seed in range(spec.seeds):
            key = trial_key(arm.name, seed)
            if key not in taken:
                study.enqueue_trial(
                    {"arm": arm.name, "seed": seed},
                    user_attrs={"key": key, "configs": list(spec.configs),
                                "overrides": spec.trial_overrides(arm, seed, quick)},
                )
                queued += 1
    return queued


def _duplicate(study: optuna.Study, trial: optuna.Trial, key: str) -> bool:
    return any(t.user_attrs.get("key") == key and t.number != trial.number
               and t.state in (*FINISHED, TrialState.RUNNING)
               for t in study.get_trials(deepcopy=False))


def work(study: optuna.Study, spec: AblationSpec, out: Path, threads: int = 0,
         on_done: Callable[[Finished], None] = lambda f: None) -> None:
    """Pop queued trials and run them until the queue is empty."""
    from cnnlab.config import load_config
    from cnnlab.training.run import run

    arms = [arm.name for arm in spec.arms]
    datasets: dict[tuple[Any, ...], ImageData] = {}
    while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial = study.ask()
        key = trial.user_attrs.get("key")
        trial.set_user_attr("worker", owner_id())
        if key is None or _duplicate(study, trial, key):  # another worker got there first
            trial.set_user_attr("note", "no queued work left" if key is None else "duplicate")
            study.tell(trial, state=TrialState.FAIL)
            continue
        arm = trial.suggest_categorical("arm", arms)
        seed = trial.suggest_int("seed", 0, 2**31 - 1)
        cfg = load_config(trial.user_attrs["configs"], trial.user_attrs["overrides"])
        cfg.wandb.group, cfg.wandb.job_type = study.study_name, arm
        cfg.wandb.name, cfg.wandb.tags = f"{arm} seed={seed}", [study.study_name, f"seed={seed}"]
        cfg.trainer.images = False  # the report draws the study's curves
        if threads:
            cfg.trainer.threads = threads
        run_dir = out / "trials" / safe_name(arm) / f"seed{seed}"
        try:  # overwrite: a killed attempt may have finished its folder but not its trial
            result = run(cfg, run_dir, data=load_cached(cfg.data, datasets), overwrite=True)
        except (CnnlabError, RuntimeError, ValueError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            trial.set_user_attr("error", reason)
            study.tell(trial, state=TrialState.FAIL)
            on_done(Finished(arm, seed, None, reason))
            continue
        for name in RESULT_KEYS:
            if name in result.metrics:
                trial.set_user_attr(name, result.metrics[name])
        trial.set_user_attr("history", result.history)
        if result.metrics["diverged"]:  # its metric means nothing; the report lists it apart
            reason = (f"diverged: training loss {result.metrics['train_loss']:.4g} in epoch "
                      f"{result.metrics['epochs']}")
            trial.set_user_attr("reason", reason)
            study.tell(trial, state=TrialState.PRUNED)
            on_done(Finished(arm, seed, None, reason))
            continue
        value = result.metrics[spec.metric]
        study.tell(trial, value)
        on_done(Finished(arm, seed, value))


def _worker_main(url: str, name: str, out: str, threads: int = 1) -> None:
    """A spawned worker process: its own storage connection, one torch thread (0: torch's
    default, which oversubscribes the cores when several workers run)."""
    study = load_study(open_storage(url), name)
    spec = AblationSpec.from_dict({**study.user_attrs["spec"], "seeds": 0})
    work(study, spec, Path(out), threads=threads)


def run_workers(target: Callable[..., None], args: list[tuple[Any, ...]],
                poll: Callable[[], None]) -> None:
    """Start one spawned process per ``args`` entry, call ``poll`` every second until all
    finish, and fail if any worker did (the storage keeps what the others finished)."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=a) for a in args]
    for p in procs:
        p.start()
    while any(p.is_alive() for p in procs):
        poll()
        time.sleep(1.0)
    poll()
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise CnnlabError(f"{len(failed)} of {len(procs)} workers exited with an error; rerun "
                          "the same command to finish the missing trials")


class Progress:
    """A progress bar over arm × seed trials with ETA, and one line per finished arm."""

    def __init__(self, spec: AblationSpec, study: str, console: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        self.spec, self.console = spec, console
        self.total = len(spec.arms) * spec.seeds
        self.bar = Bar(TextColumn(f"[bold]{study}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("ETA"), TimeRemainingColumn(), console=console,
                       disable=not console.is_terminal)
        self.task = self.bar.add_task(study, total=self.total)
        self.reported: set[str] = set()
        self.started = False

    def __enter__(self) -> Progress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def update(self, trials: list[optuna.trial.FrozenTrial]) -> None:
        from cnnlab.studies.report import Interval

        done: dict[str, dict[int, float | None]] = {}
        for t in trials:
            if t.state in FINISHED and "key" in t.user_attrs:
                done.setdefault(t.params["arm"], {})[t.params["seed"]] = t.value
        count = sum(len(v) for v in done.values())
        if not self.started:  # trials done by an earlier run don't count towards the ETA
            self.bar.reset(self.task, total=self.total - count, completed=0)
            self.started, self.before = True, count
        self.bar.update(self.task, completed=count - self.before)
        for arm in self.spec.arms:
            values = done.get(arm.name, {})
            if arm.name not in self.reported and len(values) >= self.spec.seeds:
                self.reported.add(arm.name)
                scores = [v for v in values.values() if v is not None]
                diverged = f", {len(values) - len(scores)} diverged" if len(scores) < len(values) else ""
                self.bar.console.print(f"✓ {arm.name}: {self.spec.metric} "
                                       f"{Interval.of(scores).text()} ({len(scores)} seeds{diverged})")


def check_architectures(spec: AblationSpec, quick: bool) -> None:
    """Every arm's network fits its data: fail before any trial starts, not in the middle."""
    from cnnlab.models.convnet import feature_shape

    datasets: dict[tuple[Any, ...], ImageData] = {}
    for arm in spec.arms:
        cfg = spec.config(arm, 0, quick)
        try:
            feature_shape(cfg.model, load_cached(cfg.data, datasets).input_shape)
        except CnnlabError as err:
            raise CnnlabError(f"spec {spec.name}: arm {arm.name!r}: {err}") from None


def ablate(spec: AblationSpec, quick: bool, out: Path, url: str, workers: int,
           console: Any) -> Any:
    """Run (or resume) an ablation, then write its report and a W&B summary run."""
    from cnnlab.studies.report import write_report
    from cnnlab.tracking import summary_run

    check_architectures(spec, quick)
    study = open_ablation(spec, quick, open_study_storage(out, url))
    reconcile(study, spec, quick)
    with Progress(spec, study.study_name, console) as progress:
        progress.update(study.get_trials(deepcopy=False))
        if workers == 1:
            work(study, spec, out,
                 on_done=lambda f: progress.update(study.get_trials(deepcopy=False)))
        else:
            run_workers(_worker_main, [(url, study.study_name, str(out))] * workers,
                        lambda: progress.update(study.get_trials(deepcopy=False)))
    report = write_report(study, out)
    base = spec.config(spec.arms[0], 0, quick)
    summary_run(base, out, study.study_name, report, console)
    return report
