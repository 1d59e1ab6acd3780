"""What an entry point sets for its whole process, once: quiet logs, the warnings known not to
apply, and SIGTERM/SIGINT as a clean, resumable stop.

No library module changes global state when imported (lightning-hydra-template's ``extras()``
idea): the ``cnnlab`` command and each study worker call ``configure`` when they start; the
Python API sets the same for the length of a call only (``scoped``).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Lightning's advice for DataLoaders and big models does not apply to in-memory tensor batches;
# epoch metrics are torchmetrics values, already synced across processes; Optuna's experimental
# APIs (the journal storage, heartbeats) are the ones cnnlab chose.
IGNORED_WARNINGS = (
    ".*does not have many workers.*", ".*Checkpoint directory .* exists and is not empty.*",
    ".*is smaller than the logging interval.*", ".*GPU available but not used.*",
    ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
    ".*when logging on epoch level in distributed setting.*",
    ".*is experimental \\(supported from v.*", ".*is an experimental feature.*",
)


QUIET_LOGGERS = ("lightning.pytorch", "optuna")  # banners, a line per trial


def configure() -> None:
    """Lightning's device and tip banners and Optuna's line per trial off (each sets INFO when
    first imported: call this after), the warnings above, and matplotlib's file-only backend
    unless the user chose one (cnnlab writes PNGs, opens no window, and draws reports on a
    thread, where GUI backends fail)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


@contextmanager
def scoped() -> Iterator[None]:
    """``configure`` for one call of the Python API: afterwards a notebook's warning filters,
    log levels and ``MPLBACKEND`` are as the call found them."""
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    backend = os.environ.get("MPLBACKEND")
    with warnings.catch_warnings():
        configure()
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            if backend is None:
                os.environ.pop("MPLBACKEND", None)
            else:
                os.environ["MPLBACKEND"] = backend


STORAGE_ERRORS = {  # an OSError of a full or read-only disk: what to do about it
    errno.ENOSPC: "free some space (or another --out / --storage)",
    errno.EDQUOT: "free some of your quota (or another --out / --storage)",
    errno.EROFS: "a writable --out / --storage",
    errno.EACCES: "a folder you may write to (--out / --storage)",
    errno.EPERM: "a folder you may write to (--out / --storage)",
}


TEMPFAIL = 75  # sysexits' EX_TEMPFAIL: try again later (a scheduler may); the rerun resumes
DRIVERS = ("sqlalchemy", "sqlite3", "psycopg", "psycopg2")


def outage(err: BaseException) -> str | None:
    """Why the study's database stopped answering, when ``err`` or what caused it is a driver's
    operational error (Optuna reports it as "invalid data … exceeding max length"); else None."""
    seen: BaseException | None = err
    while seen is not None:
        kind = type(seen)
        if kind.__name__ in ("OperationalError", "InterfaceError") and \
                kind.__module__.split(".")[0] in DRIVERS:
            text = str(getattr(seen, "orig", None) or seen).strip().splitlines()
            return (text or [kind.__name__])[0][:200]
        seen = seen.__cause__ or seen.__context__
    return None


def outage_line(why: str) -> str:
    return (f"cnnlab: error: the study's database stopped answering ({why}); allowed: a "
            f"reachable database (a lock is waited out for $CNNLAB_STORAGE_WAIT_S, default 60 s), "
            "then rerun the same command: finished work is kept")


class Stopped(KeyboardInterrupt):
    """SIGTERM (``timeout``, ``kill``, SLURM's preemption or time limit) or SIGINT, raised
    where the command is, so it unwinds like Ctrl-C: staged runs are removed, trials failed
    (a rerun redoes them). Lightning turns it into ``sys.exit(1)`` inside a fit, so the signal
    is remembered in ``STOPPED`` for the entry point to report."""


STOPPED: list[int] = []  # the signals received, in order


def _stop(signum: int, frame: object) -> None:
    STOPPED.append(signum)
    raise Stopped(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise ``Stopped`` inside the block (main thread only); the previous
    handlers come back after it (in-process callers, such as tests, keep theirs)."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        STOPPED.clear()
        previous = {signum: signal.signal(signum, _stop)
                    for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
