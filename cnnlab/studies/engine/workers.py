"""Worker processes for ``--workers N``: forked from a server that imported their machinery once,
dying with the command whatever kills it, and ended by it when it stops."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from collections.abc import Callable
from multiprocessing import forkserver
from multiprocessing.context import ForkServerContext, SpawnContext
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.process import (
    TEMPFAIL,
    Outage,
    configure,
    die_with_parent,
    end_with,
    outage,
    outage_line,
    pid_alive,
)


def _die(signum: int, _frame: object) -> None:
    """A worker's SIGTERM: it dies of the signal at once. A handler, not ``SIG_DFL``, because
    Lightning replaces ``SIG_DFL`` inside a fit with its own, which unwound the worker through
    W&B's finish and the run's removal (tracebacks, and a staging folder a W&B service was
    still writing into); Lightning calls a handler it finds, after its own."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _child(target: Callable[..., None], args: tuple[Any, ...], env: dict[str, str], cwd: str,
           parent: int) -> None:
    """A worker forked from the fork server: the caller's environment and folder, then work
    until done, or until the command or the fork server dies (SIGTERM) or Ctrl-C: its trial
    then stays with the storage, which a rerun takes over as lost."""
    signal.signal(signal.SIGTERM, _die)
    die_with_parent()
    end_with(parent)
    configure()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        target(*args)
    except KeyboardInterrupt:
        os._exit(130)
    except Exception as err:
        if not pid_alive(parent):  # what failed went with the command (its W&B service): the
            _die(signal.SIGTERM, None)  # worker ends as its SIGTERM would a moment later
        if isinstance(err, CnnlabError):  # bad input found by this worker: its line, status 2
            print(f"cnnlab: error: {err}", file=sys.stderr, flush=True)
            os._exit(2)
        why = outage(err)
        if why is None:
            raise
        print(outage_line(why), file=sys.stderr, flush=True)
        os._exit(TEMPFAIL)


# What a worker's first W&B run imports (W&B's launch inputs alone take about a second): the
# fork server imports them once, with the worker's own module.
WORKER_MODULES = ("wandb", "wandb.sdk.launch.inputs.internal")


def _context(module: str) -> ForkServerContext | SpawnContext:
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
                poll: Callable[[], None], done: Callable[[], bool]) -> None:
    """Start one worker process per ``args`` entry, call ``poll`` every second (and as each
    worker ends) until all finish. A worker that failed fails the command unless ``done()``
    says the others finished all the work (they take over a killed worker's trial); the
    storage keeps what was finished. Workers fork from a server that imported ``target``'s
    module."""
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
    if TEMPFAIL in failed:
        raise Outage("a worker lost the study's database")
    if 2 in failed:
        raise CnnlabError("a worker stopped on the error above; allowed: fix what it names, "
                          "then rerun the same command (finished work is kept)")
    if failed and not done():
        raise CnnlabError(f"{len(failed)} of {len(procs)} workers exited with an error; rerun "
                          "the same command to finish the missing trials")
    if failed:
        print(f"cnnlab: note: {len(failed)} of {len(procs)} workers ended early "
              f"({', '.join(_ended(code) for code in failed)}); the others finished their work",
              file=sys.stderr)


def _ended(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
