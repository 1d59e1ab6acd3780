"""``cnnlab sync``: upload the offline W&B runs of studies and fits with W&B's own ``wandb sync``.

One ``wandb sync`` process takes every run (it keeps the folders of one resumed run in order), to
the server W&B itself would use (``WANDB_BASE_URL``, else W&B's settings from ``wandb login
--host``, else its default). ``wandb sync`` marks a run synced even when an artifact failed; the
only trace is an ERROR line of its sync log. So that log is written to a cache folder (never the
current folder) and read back: a run counts as synced when W&B marked it and its log has no
error. A run with an error gets cnnlab's record beside W&B's marker, so the next sync retries it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cnnlab.errors import CnnlabError
from cnnlab.outputs.files import REPORTS
from cnnlab.outputs.ownership import write_atomic
from cnnlab.process import die_with_parent

OFFLINE = "offline-run-"  # how W&B names an offline run's folder: offline-run-DATE_TIME-ID
CONNECT_S = 5.0  # how long ``cnnlab sync`` waits for the W&B server before giving up
RECORD = ".cnnlab-sync.json"  # beside run-ID.wandb: cnnlab's verdict on W&B's last sync of it
BENIGN = ("featurechecker:", "runsync: printRunURL")  # ERROR lines that lose nothing
FINISHED = re.compile(r"Finished syncing (.+?)\s*$")


def offline_runs(roots: list[Path]) -> list[Path]:
    """Every offline W&B run folder under ``roots``, oldest first (a resumed summary run's
    folders then sync in the order they were written). The walk does not enter a run folder
    (its media) or a checkpoint folder: hundreds of runs list in well under a second. A run
    folder that is a link is not one: sync writes its marks into the folder, which would land
    in the link's target, outside the tree synced."""
    runs: set[Path] = set()
    for root in roots:
        for folder, dirs, _ in os.walk(root):
            found = [d for d in dirs if d.startswith(OFFLINE)]
            runs.update(Path(folder) / d for d in found if not (Path(folder) / d).is_symlink())
            dirs[:] = [d for d in dirs if not d.startswith(OFFLINE) and d != "checkpoints"]
        if root.name.startswith(OFFLINE) and not root.is_symlink():
            runs.add(root)
    return sorted(runs, key=lambda p: (p.name.split("-")[2], str(p)))


def _run_file(run: Path) -> Path | None:
    """The run's ``run-ID.wandb`` (a link is none: W&B's ``.synced`` mark follows it)."""
    return next((p for p in run.iterdir() if p.suffix == ".wandb" and not p.is_symlink()), None)


def is_synced(run: Path) -> bool:
    """W&B marked the run uploaded (``run-ID.wandb.synced``) and cnnlab found no error in that
    upload's log (no record, or a record saying complete)."""
    wandb_file = _run_file(run)
    if wandb_file is None or not wandb_file.with_suffix(".wandb.synced").exists():
        return False
    record = wandb_file.with_name(wandb_file.name + RECORD)
    try:
        return bool(json.loads(record.read_text())["complete"])
    except FileNotFoundError:
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False  # unreadable: sync it again


def server_url() -> str:
    """The server ``wandb sync`` would use: ``WANDB_BASE_URL``, else W&B's settings files
    (``wandb login --host``), else W&B's default."""
    if os.environ.get("WANDB_BASE_URL"):
        return os.environ["WANDB_BASE_URL"]
    from wandb.sdk import wandb_setup  # W&B's own reading of its settings files

    with contextlib.redirect_stderr(io.StringIO()):  # "Loading settings from …"
        return str(wandb_setup.singleton().settings.base_url)


def check_reachable(url: str) -> None:
    """A TCP connection to ``url`` within ``CONNECT_S``: ``wandb sync`` itself retries for
    minutes when there is no network."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as err:  # "Invalid IPv6 URL", a port out of range
        parts, port = None, 0
        why = str(err)
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise CnnlabError(f"W&B server {url!r}: not a server URL"
                          f"{f' ({why})' if parts is None else ''}; allowed: http(s)://HOST[:PORT] "
                          "in WANDB_BASE_URL or `wandb login --host URL`")
    try:
        socket.create_connection((parts.hostname or "", port), timeout=CONNECT_S).close()
    except OSError as err:
        raise CnnlabError(f"W&B server {url}: cannot connect ({err.strerror or err}); allowed: a "
                          "machine that reaches it (WANDB_BASE_URL or `wandb login --host URL` "
                          "for your own server); nothing was synced") from None


def sync_roots(targets: list[str]) -> list[Path]:
    """The folders to look for runs in: each target as a folder or a study under reports/
    (an unknown target is an error); without targets, reports/ and runs/ where they exist."""
    roots = []
    for target in targets or ["reports", "runs"]:
        path = Path(target)
        if not path.is_dir() and (REPORTS / target).is_dir():
            path = REPORTS / target
        if not path.is_dir():
            if targets:
                raise CnnlabError(f"sync: {target}: no such folder or study under reports/; "
                                  "allowed: a study name (reports/NAME) or a folder of runs")
            continue
        roots.append(path)
    return roots


def log_folder() -> Path:
    """Where ``wandb sync`` runs and writes its logs: a new folder in the user's cache, never
    an earlier sync's (two syncs in one second of one process shared one, and the second read
    the first's errors as its own)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    parent = cache / "cnnlab" / "wandb-sync"
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # XDG_CACHE_HOME (or a folder in it) a file
        raise CnnlabError(f"sync: cannot make {parent} for wandb sync's logs (a file is in the "
                          "way); allowed: XDG_CACHE_HOME (default ~/.cache) a folder you may "
                          "write to") from None
    return Path(tempfile.mkdtemp(prefix=f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-",
                                 dir=parent))


def _errors(logs: Path) -> dict[str, list[str]]:
    """ERROR lines of ``wandb sync``'s logs, by the .wandb file they concern."""
    found: dict[str, list[str]] = {}
    for log in logs.rglob("debug-sync*.log"):
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                entry = json.loads(line)
                message = str(entry.get("msg", ""))
                if entry.get("level") == "ERROR" and not message.startswith(BENIGN):
                    found.setdefault(str(entry.get("sync_path", "")), []).append(message)
    return found


@dataclass(frozen=True)
class Outcome:
    """What one ``cnnlab sync`` did: the server ("" when there was nothing to sync), the runs
    that did not arrive whole with W&B's error for each, the runs that did, W&B's log folder."""

    url: str
    failed: dict[Path, str]
    synced: list[Path]
    logs: Path


def sync(runs: list[Path], timeout: float, progress: Callable[[str], None] = print) -> Outcome:
    """Upload the runs not synced yet in one ``wandb sync`` and check each one's log; an error,
    with nothing synced, when the server is unreachable. ``progress`` gets a line per run."""
    todo = [r for r in runs if not is_synced(r)]
    if not todo:  # no server asked (and W&B not loaded) for nothing to do
        return Outcome("", {}, [], Path())
    url = server_url()
    check_reachable(url)
    cli = shutil.which("wandb", path=str(Path(sys.executable).parent)) or shutil.which("wandb")
    if cli is None:
        raise CnnlabError("sync: the wandb command is not installed; allowed: pip install wandb")
    files = {r: _run_file(r) for r in todo}
    paths = [str(f.resolve()) for f in files.values() if f is not None]
    logs = log_folder()
    process = subprocess.Popen([cli, "sync", "--include-synced", *paths], cwd=logs,
                               env={**os.environ, "WANDB_BASE_URL": url}, text=True,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    killer = threading.Timer(timeout * len(todo), process.kill)  # a hung upload ends too
    killer.start()
    assert process.stdout is not None
    done = 0
    try:
        with (logs / "wandb-sync.out").open("w") as out:
            for line in process.stdout:
                out.write(line)
                if finished := FINISHED.search(line):
                    done += 1
                    progress(f"[{done}/{len(todo)}] sent {(logs / finished[1]).resolve()}")
        process.wait()  # the timer still ends a process that hangs after its output
    finally:
        killer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    errors = _errors(logs)
    failed: dict[Path, str] = {}
    for run, wandb_file in files.items():
        if wandb_file is None:
            failed[run] = "no run-ID.wandb file in the folder"
            continue
        found = errors.get(str(wandb_file.resolve()), [])
        why = [m for m in found if not m.startswith("api: HTTP error")] or found  # the specific
        if not wandb_file.with_suffix(".wandb.synced").exists():
            why = why or [f"wandb sync did not finish it (see {logs})"]
        record = {"complete": not why, "server": url, "errors": why[:5], "log": str(logs)}
        write_atomic(wandb_file.with_name(wandb_file.name + RECORD), json.dumps(record, indent=1))
        if why:
            failed[run] = why[0][:300]
    return Outcome(url, failed, [r for r in todo if r not in failed], logs)
