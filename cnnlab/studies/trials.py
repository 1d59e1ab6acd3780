"""The one trial loop of ablations and searches: pop queued work, run it, record the outcome.

Work is queued in the storage as WAITING trials (an ablation's arm × seed, a search's slots), and
the storage hands each to exactly one worker. While a trial runs, its worker stamps a heartbeat
on it every ``CNNLAB_HEARTBEAT_S`` seconds. A RUNNING trial is *lost* when its worker is a dead
process of this host, or when no heartbeat came for ``CNNLAB_GRACE_S`` seconds, whichever host
ran it: it is failed and its work queued again. A live worker's trial, on any host, is never
taken. A worker with nothing queued waits for the trials others still run (and takes over the
lost ones), so the last worker standing finishes the study.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import forkserver
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cnnlab.config import ExperimentConfig
from cnnlab.errors import CnnlabError
from cnnlab.files import owner_alive, owner_id

# Trial user attributes, one name each (a dashboard shows them under these names).
KEY = "key"              # the unit of work: "<arm> | seed=<n>" (ablation), "slot <n>" (search)
ARM, SEED = "arm", "seed"                 # an ablation trial's arm and seed
CONFIGS, OVERRIDES = "configs", "overrides"  # what an ablation trial runs
WORKER = "worker"        # host:pid of the process that runs (or ran) the trial
HEARTBEAT = "heartbeat"  # Unix time of that worker's last sign of life
REASON = "reason"        # why the trial failed or was pruned
NOTE = "note"            # the trial ran nothing (a lost race for queued work)
RESULT_KEYS = ("test_acc", "val_acc", "train_loss", "test_loss", "fit_seconds", "epochs",
               "train_acc", "generalization_gap", "weight_sparsity", "weight_l2",
               "epochs_to_target", "bn_train_eval_gap")
FOLD_SCORES, FOLD_EPOCHS, CV_STD = "fold_scores", "fold_epochs", "cv_std"
QUEUED = (KEY, ARM, SEED, CONFIGS, OVERRIDES)  # what a lost trial's requeued copy keeps
LEGACY_REASON = "error"  # cnnlab 0.1 stored an ablation's failure here,
LEGACY_HISTORY = "history"  # and its per-epoch metrics here

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # pruned: diverged or stopped; not redone
FAILURES = (CnnlabError, RuntimeError, ValueError)  # a trial's run failed; the study goes on
POLL_S = 1.0  # how often a worker with nothing queued looks at the others' trials


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 86400:
        raise CnnlabError(f"{name}: got {text!r}; allowed: seconds, a number in (0, 86400)")
    return value


def liveness() -> tuple[float, float]:
    """(heartbeat interval, grace period) in seconds: ``$CNNLAB_HEARTBEAT_S`` (default 10) and
    ``$CNNLAB_GRACE_S`` (default 60; at least two intervals, so one late beat is not a death)."""
    interval, grace = _seconds("CNNLAB_HEARTBEAT_S", 10.0), _seconds("CNNLAB_GRACE_S", 60.0)
    if grace < 2 * interval:
        raise CnnlabError(f"CNNLAB_GRACE_S: got {grace:g}; allowed: at least twice "
                          f"CNNLAB_HEARTBEAT_S ({interval:g}), so one late heartbeat is no death")
    return interval, grace


def reason_of(trial: FrozenTrial) -> str | None:
    return trial.user_attrs.get(REASON) or trial.user_attrs.get(LEGACY_REASON)


def trial_config(cfg: ExperimentConfig, group: str, job_type: str, threads: int) -> None:
    """The one policy for a study trial's run (ablation arm × seed, search fold): W&B group
    and job type, no images or progress bar (the report draws the study's curves, the study
    shows one bar), no model upload (a checkpoint per trial is too many), and a fixed torch
    thread count (``threads``, else the config's, else one): results must not depend on the
    worker count or the machine's load, as torch's sums vary with the threads."""
    cfg.wandb.group, cfg.wandb.job_type = group, job_type
    cfg.trainer.images = False
    cfg.trainer.progress_bar = False
    cfg.wandb.log_model = False
    if threads or not cfg.trainer.threads:
        cfg.trainer.threads = threads or 1


def is_lost(trial: FrozenTrial, now: float, grace: float) -> bool:
    """A RUNNING trial whose worker is a dead process of this host (or this very process, which
    asks between its own trials) or has sent no heartbeat for ``grace`` seconds."""
    worker = trial.user_attrs.get(WORKER)
    if worker is not None and (worker == owner_id() or not owner_alive(worker)):
        return True
    beat = trial.user_attrs.get(HEARTBEAT)
    if beat is None:  # an older cnnlab, or the instant between ask and the first stamp
        beat = trial.datetime_start.timestamp() if trial.datetime_start else now
    return now - beat > grace


def reclaim(study: optuna.Study, requeue: Callable[[FrozenTrial], None]) -> int:
    """Fail every lost trial and ``requeue`` its work; returns how many. When two workers judge
    the same trial, the storage lets only one of them fail it, so its work is queued once."""
    _, grace = liveness()
    now, count = time.time(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_lost(t, now, grace):
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, ValueError):  # another worker failed it (or it ended)
            continue
        requeue(t)
        count += 1
    return count


def requeue_same(study: optuna.Study) -> Callable[[FrozenTrial], None]:
    """Queue a lost trial again with its parameters and its work attributes."""
    def requeue(t: FrozenTrial) -> None:
        study.enqueue_trial(t.params, user_attrs={k: t.user_attrs[k] for k in QUEUED
                                                  if k in t.user_attrs})
    return requeue


class _Heartbeat:
    """Stamps the running trial with the time every interval, from a thread."""

    def __init__(self, trial: optuna.Trial, interval: float) -> None:
        self.trial, self.interval = trial, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.trial.set_user_attr(HEARTBEAT, time.time())
            except Exception:  # noqa: BLE001  a missed beat (storage busy); the next one may land
                continue

    def __enter__(self) -> _Heartbeat:
        self.trial.set_user_attr(WORKER, owner_id())
        self.trial.set_user_attr(HEARTBEAT, time.time())
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _taken_elsewhere(study: optuna.Study, trial: optuna.Trial, key: str) -> bool:
    return any(t.user_attrs.get(KEY) == key and t.number != trial.number
               and t.state in (*FINISHED, TrialState.RUNNING)
               for t in study.get_trials(deepcopy=False))


@dataclass(frozen=True)
class Queue:
    """A study's queued work: how to run a trial, and how to queue a lost one's work again."""

    study: optuna.Study
    objective: Callable[[optuna.Trial], float]
    requeue: Callable[[FrozenTrial], None]


def work(queues: Sequence[Queue], on_done: Callable[[], None] = lambda: None,
         stop: Callable[[], bool] = lambda: False) -> None:
    """Run queued trials, always from the first queue that has some, until no queue has queued
    or running ones (or ``stop()``): a worker done with one study's queue goes on with the next
    while others finish the first one's last trials.

    ``objective`` returns the trial's value, raises ``optuna.TrialPruned(reason)`` (diverged or
    pruned: recorded, not redone) or one of ``FAILURES`` (recorded; a rerun queues it again).
    """
    interval, _ = liveness()
    while not stop():
        for queue in queues:
            reclaim(queue.study, queue.requeue)
        queue = next((q for q in queues
                      if q.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))), None)
        if queue is None:
            if not any(q.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                       for q in queues):
                return
            time.sleep(POLL_S)  # others' trials: wait for them to finish, or to be lost
            continue
        study = queue.study
        trial = study.ask()
        key = trial.user_attrs.get(KEY)
        if key is None or _taken_elsewhere(study, trial, key):  # another worker was faster
            trial.set_user_attr(WORKER, owner_id())
            trial.set_user_attr(NOTE, "no queued work left" if key is None else "duplicate")
            study.tell(trial, state=TrialState.FAIL)
            continue
        with _Heartbeat(trial, interval):
            try:
                value: float | None = queue.objective(trial)
                state = TrialState.COMPLETE
            except optuna.TrialPruned as reason:
                trial.set_user_attr(REASON, str(reason))
                value, state = None, TrialState.PRUNED
            except FAILURES as err:
                trial.set_user_attr(REASON, (str(err).splitlines() or [type(err).__name__])[0])
                value, state = None, TrialState.FAIL
        study.tell(trial, value, state=state)
        on_done()


PR_SET_PDEATHSIG = 1  # Linux prctl option: a signal for this process when its parent dies


def _die_with_parent() -> None:
    """SIGTERM this worker when its parent (the fork server, which exits with the command) dies,
    so no worker outlives a killed command (Linux; elsewhere the command ends its workers)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return


def _child(target: Callable[..., None], args: tuple[Any, ...], env: dict[str, str], cwd: str,
           parent: int) -> None:
    """A worker forked from the fork server: the caller's environment and folder, then work
    until done, or until the command or the fork server dies (SIGTERM) or Ctrl-C: its trial
    then stays with the storage, which a rerun takes over as lost."""
    _die_with_parent()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not _alive(parent):  # the command died before the death signal was armed
        os._exit(143)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        target(*args)
    except KeyboardInterrupt:
        os._exit(130)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# What a worker's first W&B run imports (W&B's launch inputs alone take about a second): the
# fork server imports them once, with the worker's own module.
WORKER_MODULES = ("wandb", "wandb.sdk.launch.inputs.internal")


def _context(module: str) -> multiprocessing.context.BaseContext:
    """A fork server that imported ``module`` (torch, Lightning) and W&B once: workers start in
    milliseconds instead of paying seconds of imports each (spawn where there is no fork
    server)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([module, *WORKER_MODULES])  # no effect once the server runs
    return ctx


def warm_workers(module: str) -> None:
    """Start the fork server of ``module``'s workers now: it imports their machinery on another
    core while this process imports its own (seconds saved at the start of ``--workers N``)."""
    if _context(module).get_start_method() == "forkserver":
        forkserver.ensure_running()


def run_workers(target: Callable[..., None], args: list[tuple[Any, ...]],
                poll: Callable[[], None]) -> None:
    """Start one worker process per ``args`` entry, call ``poll`` every second (and as each
    worker ends) until all finish, and fail if any worker did (the storage keeps what the
    others finished). Workers fork from a server that imported ``target``'s module."""
    ctx = _context(target.__module__)
    env, cwd = dict(os.environ), os.getcwd()
    procs = [ctx.Process(target=_child, args=(target, a, env, cwd, os.getpid())) for a in args]
    try:
        for p in procs:
            p.start()
        while running := [p.sentinel for p in procs if p.is_alive()]:
            poll()
            multiprocessing.connection.wait(running, timeout=1.0)
    finally:  # stopped (SIGTERM, Ctrl-C) or failed: no worker goes on without the command
        for p in procs:
            if p.pid is not None and p.is_alive():
                p.terminate()
        for p in procs:
            if p.pid is not None:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
                    p.join()
    poll()
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise CnnlabError(f"{len(failed)} of {len(procs)} workers exited with an error; rerun "
                          "the same command to finish the missing trials")


def study_bars(console: Console) -> Progress:
    """One progress bar per study, with its ETA, on a terminal (none elsewhere)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console,
                    disable=not console.is_terminal)


class StudyProgress:
    """Progress over a study's units of work. On a terminal: its bar among ``bars`` (trials show
    no bars of their own); elsewhere (a log file, nohup, SLURM): a line per finished trial with
    its value, its time, the time since the study's first trial started and the ETA. ``lines``
    adds one-line news either way."""

    def __init__(self, name: str, total: int, bars: Progress,
                 done: Callable[[list[FrozenTrial]], int],
                 lines: Callable[[list[FrozenTrial]], list[str]] = lambda trials: [],
                 metric: str = "value") -> None:
        self.name, self.done, self.lines, self.total, self.metric = name, done, lines, total, metric
        self.bars, self.console = bars, bars.console
        self.task = bars.add_task(name, total=total)
        self.before: int | None = None
        self.seen: set[int] = set()
        self.start: float | None = None  # when this command first saw one of its trials run

    def next_round(self, total: int, lines: Callable[[list[FrozenTrial]], list[str]]) -> None:
        """More units of work (a new round of seeds), with their news."""
        self.total, self.lines = total, lines
        if self.before is not None:
            self.bars.update(self.task, total=max(total - self.before, 0))

    def update(self, trials: list[FrozenTrial]) -> None:
        count = self.done(trials)
        ended = [t for t in trials if t.state in (*FINISHED, TrialState.FAIL)
                 and NOTE not in t.user_attrs]
        if self.before is None:  # work done by an earlier run doesn't count towards the ETA
            self.before = count
            self.seen = {t.number for t in ended}
            self.bars.reset(self.task, total=max(self.total - count, 0), completed=0)
        if self.start is None and (len(ended) > len(self.seen) or any(
                t.state == TrialState.RUNNING for t in trials)):
            self.start = time.monotonic()
        self.bars.update(self.task, completed=count - self.before)
        if not self.console.is_terminal:
            new = sorted((t for t in ended if t.number not in self.seen),
                         key=lambda t: t.datetime_complete or t.datetime_start)
            for i, t in enumerate(new):  # several may end between two looks: number them apart
                self.seen.add(t.number)
                self.console.print(self._line(t, max(count - len(new) + 1 + i, 0)), soft_wrap=True)
        for line in self.lines(trials):
            self.console.print(line)

    def _line(self, trial: FrozenTrial, count: int) -> str:
        elapsed = time.monotonic() - (self.start or time.monotonic())
        done_now = max(count - (self.before or 0), 1)
        eta = elapsed / done_now * max(self.total - count, 0)
        outcome = (f"{self.metric} {trial.value:.4f}" if trial.state == TrialState.COMPLETE
                   else f"{trial.state.name.lower()}: {reason_of(trial) or 'no reason recorded'}")
        took = ((trial.datetime_complete - trial.datetime_start).total_seconds()
                if trial.datetime_complete and trial.datetime_start else 0.0)
        return (f"{self.name} [{count}/{self.total}] {trial.user_attrs.get(KEY, trial.number)}: "
                f"{outcome} ({took:.1f} s) · elapsed {_clock(elapsed)} · ETA {_clock(eta)}")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"
