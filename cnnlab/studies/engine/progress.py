"""A study's progress as people see it: a bar with its ETA on a terminal, a line per finished
trial elsewhere (log files, nohup, SLURM)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cnnlab.studies.engine.store import FINISHED, Store


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
                 and not Store.noted(t)]
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
                         key=lambda t: t.datetime_complete or t.datetime_start or datetime.min)
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
                   else f"{trial.state.name.lower()}: {Store.reason(trial) or 'no reason recorded'}")
        took = ((trial.datetime_complete - trial.datetime_start).total_seconds()
                if trial.datetime_complete and trial.datetime_start else 0.0)
        return (f"{self.name} [{count}/{self.total}] {Store.key(trial) or trial.number}: "
                f"{outcome} ({took:.1f} s) · elapsed {_clock(elapsed)} · ETA {_clock(eta)}")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"
