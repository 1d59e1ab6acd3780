"""``python -m cnnlab.cli ARGS`` for the tests that need a command of its own (kills, resumes,
exit statuses), forked from a server that imported cnnlab's machinery once instead of a fresh
interpreter importing torch, Lightning, W&B and Optuna again (about 6 s each, half of what a
kill-and-resume test cost).

The child is a process of its own, as the command would be: its own pid (signals reach it
alone), environment, working folder, umask, stdout and stderr, and the exit status the command
gives (``-9`` when killed). Tests of what a fresh interpreter imports, or of DDP (which starts
``sys.argv`` again), keep ``subprocess``.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

PRELOAD = ["cnnlab.cli", "cnnlab.studies.ablations.run", "cnnlab.studies.searches.run"]
_CONTEXT = multiprocessing.get_context("forkserver")


def _command(argv: list[str], env: dict[str, str], cwd: str, umask: int | None,
             hostname: str | None, out: str, err: str) -> None:
    """The child: the command's environment, folder, umask, host name (another machine's, for
    the tests of several machines) and output files, then the command."""
    if hostname is not None:
        socket.gethostname = lambda: hostname
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    if umask is not None:
        os.umask(umask)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = [sys.executable, *argv]
    from cnnlab.cli import main  # preloaded by the server: no import happens here

    sys.exit(main(argv))


class Command:
    """A started command, with the part of ``subprocess.Popen`` the tests use."""

    def __init__(self, args: Sequence[str | Path], env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None, umask: int | None = None,
                 hostname: str | None = None) -> None:
        argv = [str(a) for a in args]
        assert argv[:3] == [sys.executable, "-m", "cnnlab.cli"], argv
        self._files = [tempfile.NamedTemporaryFile(prefix="cnnlab-warm-", delete=False)
                       for _ in range(2)]
        for f in self._files:
            f.close()
        self._process = _CONTEXT.Process(
            target=_command, args=(argv[3:], dict(os.environ if env is None else env),
                                   str(cwd or os.getcwd()), umask, hostname,
                                   *(f.name for f in self._files)))
        self._process.start()
        self.pid = self._process.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not self._process.is_alive():
            self._process.join()
            self.returncode = self._process.exitcode
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Wait for the command (killing it after ``timeout``) and return its stdout, stderr."""
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
            raise subprocess.TimeoutExpired(self._process.name, timeout or 0)
        self.poll()
        texts = []
        for f in self._files:
            texts.append(Path(f.name).read_text(errors="replace"))
            Path(f.name).unlink(missing_ok=True)
        return texts[0], texts[1]


def run(args: Sequence[str | Path], env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None, timeout: float | None = None,
        umask: int | None = None) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(args, capture_output=True, text=True, ...)`` for a cnnlab command."""
    command = Command(args, env, cwd, umask)
    out, err = command.communicate(timeout)
    assert command.returncode is not None
    return subprocess.CompletedProcess(list(map(str, args)), command.returncode, out, err)


_CONTEXT.set_forkserver_preload(PRELOAD)
