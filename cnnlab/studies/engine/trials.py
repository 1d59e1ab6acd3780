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

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from cnnlab.config import ExperimentConfig, with_values
from cnnlab.errors import CnnlabError, Refused
from cnnlab.outputs.ownership import owner_alive, owner_id
from cnnlab.studies.engine.store import Store

FAILURES = (CnnlabError, RuntimeError, ValueError)  # a trial's run failed; the study goes on
POLL_S = 1.0  # how often a worker with nothing queued looks at the others' trials


MIN_HEARTBEAT_S, MIN_GRACE_S = 0.5, 4.0  # below these a busy machine's late beat is a "death"


def _seconds(name: str, default: float, least: float) -> float:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not least <= value < 86400:
        raise CnnlabError(f"{name}: got {text!r}; allowed: seconds, a number in [{least:g}, 86400)")
    return value


def liveness() -> tuple[float, float]:
    """(heartbeat interval, grace period) in seconds: ``$CNNLAB_HEARTBEAT_S`` (default 10) and
    ``$CNNLAB_GRACE_S`` (default 60; at least two intervals, so one late beat is not a death)."""
    interval = _seconds("CNNLAB_HEARTBEAT_S", 10.0, MIN_HEARTBEAT_S)
    grace = _seconds("CNNLAB_GRACE_S", 60.0, MIN_GRACE_S)
    if grace < 2 * interval:
        raise CnnlabError(f"CNNLAB_GRACE_S: got {grace:g}; allowed: at least twice "
                          f"CNNLAB_HEARTBEAT_S ({interval:g}), so one late heartbeat is no death")
    return interval, grace


def trial_config(cfg: ExperimentConfig, group: str, job_type: str, threads: int,
                 **wandb: Any) -> ExperimentConfig:
    """The one policy for a study trial's run (ablation arm × seed, search fold): W&B group,
    job type (and ``wandb`` keys: name, tags), no images or progress bar (the report draws the
    study's curves, the study shows one bar), no model upload (a checkpoint per trial is too
    many), and a fixed torch thread count (``threads``, else the config's, else one): results
    must not depend on the worker count or the machine's load, as torch's sums vary with the
    threads."""
    return with_values(cfg, {
        "wandb.group": group, "wandb.job_type": job_type, "wandb.log_model": False,
        **{f"wandb.{k}": v for k, v in wandb.items()},
        "trainer.images": False, "trainer.progress_bar": False,
        "trainer.threads": threads or cfg.trainer.threads or 1})


def is_lost(trial: FrozenTrial, now: float, grace: float) -> bool:
    """A RUNNING trial whose worker is a dead process of this host (or this very process, which
    asks between its own trials) or has sent no heartbeat for ``grace`` seconds."""
    worker = Store.worker(trial)
    if worker is not None and (worker == owner_id() or not owner_alive(worker)):
        return True
    beat = Store.heartbeat(trial)
    if beat is None:  # an older cnnlab, or the instant between ask and the first stamp
        beat = trial.datetime_start.timestamp() if trial.datetime_start else now
    return now - beat > grace


def reclaim(store: Store, requeue: Callable[[FrozenTrial], object]) -> int:
    """Fail every lost trial and ``requeue`` its work; returns how many. When two workers judge
    the same trial, the storage lets only one of them fail it, so its work is queued once."""
    _, grace = liveness()
    now, count = time.time(), 0
    for t in store.trials(TrialState.RUNNING):
        if not is_lost(t, now, grace):
            continue
        try:
            store.study.tell(t.number, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, ValueError):  # another worker failed it (or it ended)
            continue
        requeue(t)
        count += 1
    return count


class _Heartbeat:
    """Stamps the running trial with the time every interval, from a thread."""

    def __init__(self, trial: optuna.Trial, interval: float) -> None:
        self.trial, self.interval = trial, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                Store.beat(self.trial)
            except Exception:  # noqa: BLE001  a missed beat (storage busy); the next one may land
                continue

    def __enter__(self) -> _Heartbeat:
        Store.claim(self.trial)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@dataclass(frozen=True)
class Queue:
    """A study's queued work: how to run a trial, and how to queue a lost one's work again."""

    store: Store
    objective: Callable[[optuna.Trial], float]
    requeue: Callable[[FrozenTrial], object]


def work(queues: Sequence[Queue], on_done: Callable[[], None] = lambda: None,
         stop: Callable[[], bool] = lambda: False) -> None:
    """Run queued trials, always from the first queue that has some, until no queue has queued
    or running ones (or ``stop()``): a worker done with one study's queue goes on with the next
    while others finish the first one's last trials.

    ``objective`` returns the trial's value, raises ``optuna.TrialPruned(reason)`` (diverged or
    pruned: recorded, not redone) or one of ``FAILURES`` (recorded; a rerun queues it again);
    ``Refused`` (a file of the user's where the trial writes) fails the trial and stops the work.
    """
    interval, _ = liveness()
    while not stop():
        for each in queues:
            reclaim(each.store, each.requeue)
        queue = next((q for q in queues if q.store.trials(TrialState.WAITING)), None)
        if queue is None:
            if not any(q.store.trials(TrialState.RUNNING) for q in queues):
                return
            time.sleep(POLL_S)  # others' trials: wait for them to finish, or to be lost
            continue
        store, study = queue.store, queue.store.study
        trial = study.ask()
        key = store.key(trial)
        if key is None or store.taken_elsewhere(trial, key):  # another worker was faster
            store.ran_nothing(trial, "no queued work left" if key is None else "duplicate")
            study.tell(trial, state=TrialState.FAIL)
            continue
        try:
            with _Heartbeat(trial, interval):
                try:
                    value: float | None = queue.objective(trial)
                    state = TrialState.COMPLETE
                except Refused as err:  # the user's file where the trial writes: stop
                    store.fail_with(trial, str(err))
                    study.tell(trial, state=TrialState.FAIL)  # a rerun queues its work again
                    raise
                except optuna.TrialPruned as reason:
                    store.fail_with(trial, str(reason))
                    value, state = None, TrialState.PRUNED
                except FAILURES as err:
                    store.fail_with(trial, (str(err).splitlines() or [type(err).__name__])[0])
                    value, state = None, TrialState.FAIL
            study.tell(trial, value, state=state)
        except UpdateFinishedTrialError:  # stopped (SIGSTOP) or starved past the grace period
            print(f"cnnlab: note: trial {trial.number} ({key}) was taken over by another worker "
                  "after its heartbeat stopped for CNNLAB_GRACE_S; this worker gives it up "
                  "(nothing of it is recorded)", file=sys.stderr)
            continue
        on_done()


