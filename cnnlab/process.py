"""What an entry point sets for its whole process, once: quiet logs, the warnings known not to
apply, and SIGTERM/SIGINT as a clean, resumable stop.

No library module changes global state when imported (lightning-hydra-template's ``extras()``
idea): the ``cnnlab`` command and each study worker call ``configure`` when they start; the
Python API sets the same for the length of a call only (``scoped``).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
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


# Lightning's banners ("GPU available", "💡 Tip", "Restoring states", "Using bfloat16") come from
# its rank_zero loggers; importing Lightning sets its package logger back to INFO, but leaves
# theirs as set, so they stay quiet whichever comes first. Optuna: a line per trial.
QUIET_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch", "optuna")


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
    errno.ENAMETOOLONG: "a shorter path (names of at most 255 bytes)",
}


TEMPFAIL = 75  # sysexits' EX_TEMPFAIL: try again later (a scheduler may); the rerun resumes
DRIVERS = ("sqlalchemy", "sqlite3", "psycopg", "psycopg2")


class Outage(Exception):
    """The database stopped answering a worker (its line is printed): the command's status."""


def outage(err: BaseException) -> str | None:
    """Why the study's database stopped answering, when ``err`` or what caused it is a driver's
    operational error (Optuna reports it as "invalid data … exceeding max length"); else None."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, Outage):
            return str(seen)
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


PR_SET_PDEATHSIG = 1  # Linux prctl option: a signal for this process when its parent dies


def pid_alive(pid: int) -> bool:
    """A process of this host with this pid runs (another user's counts; a zombie, killed but
    not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone meanwhile (Linux), or no /proc to tell (elsewhere: alive)
        return not Path("/proc/self").exists()
    return stat.rpartition(")")[2].split()[0] != "Z"


def die_with_parent() -> None:
    """SIGTERM this process when the one that started it dies, however it dies (SIGKILL
    included): for children cnnlab starts (``preexec_fn``) and its workers. Linux only."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return


def end_with(pid: int, every: float = 0.25) -> None:
    """SIGTERM this process once ``pid`` is gone: a worker forked from a server (its parent,
    which outlives the command while any worker holds the server's pipe) still ends with the
    command that started it, within ``every`` seconds of a SIGKILL."""

    def watch() -> None:
        while pid_alive(pid):
            time.sleep(every)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="cnnlab-end-with-command", daemon=True).start()


class Stopped(KeyboardInterrupt):
    """SIGTERM (``timeout``, ``kill``, SLURM's preemption or time limit) or SIGINT, raised
    where the command is, so it unwinds like Ctrl-C: staged runs are removed, trials failed
    (a rerun redoes them). Lightning turns it into ``sys.exit(1)`` inside a fit, so the signal
    is remembered in ``STOPPED`` for the entry point to report."""


STOPPED: list[int] = []  # the signals received, in order
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


_DEFERRING: list[bool] = []  # inside ``uninterrupted`` blocks (nested: one entry each)


def _stop(signum: int, frame: object) -> None:
    STOPPED.append(signum)
    if not _DEFERRING:
        raise Stopped(signum)


@contextmanager
def uninterrupted() -> Iterator[None]:
    """A step that must not be cut in half (replacing a run folder): a SIGTERM, SIGINT or SIGHUP
    arriving inside it stops the command right after it instead."""
    before = len(STOPPED)
    _DEFERRING.append(True)
    try:
        yield
    finally:
        _DEFERRING.pop()
    if len(STOPPED) > before and not _DEFERRING:
        raise Stopped(STOPPED[-1])


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP (a closed terminal) raise ``Stopped`` inside the block (main
    thread only; a signal ignored when the block starts, as ``nohup`` ignores SIGHUP, stays
    ignored); the previous handlers come back after it (in-process callers keep theirs)."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        STOPPED.clear()
        previous = {signum: signal.signal(signum, _stop) for signum in STOP_SIGNALS
                    if signal.getsignal(signum) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def lightning_interrupts() -> Iterator[None]:
    """Lightning answers Ctrl-C (or cnnlab's SIGTERM, a ``KeyboardInterrupt`` too) inside fit
    or test with ``sys.exit(1)``, SIGINT ignored meanwhile: inside this block that becomes the
    interrupt it was, with SIGINT's handler as it was, so the Python API never exits its
    caller's process (a notebook's kernel) and Ctrl-C works there again."""
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    except SystemExit as err:
        interrupt = err.__context__
        if not isinstance(interrupt, KeyboardInterrupt):
            raise
        if main and handler is not None:
            signal.signal(signal.SIGINT, handler)
        raise interrupt from None
