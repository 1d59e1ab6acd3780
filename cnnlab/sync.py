"""``cnnlab sync``: upload the offline W&B runs of studies and fits with W&B's own ``wandb sync``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from cnnlab.errors import CnnlabError

OFFLINE = "offline-run-"  # how W&B names an offline run's folder: offline-run-DATE_TIME-ID
CONNECT_S = 5.0  # how long ``cnnlab sync`` waits for the W&B server before giving up


def offline_runs(roots: list[Path]) -> list[Path]:
    """Every offline W&B run folder under ``roots``, oldest first: a resumed summary run's
    folders then sync in the order they were written, the newest tables last."""
    runs = {p for root in roots for p in [root, *root.rglob(f"{OFFLINE}*")]
            if p.is_dir() and p.name.startswith(OFFLINE)}
    return sorted(runs, key=lambda p: (p.name.split("-")[2], str(p)))


def is_synced(run: Path) -> bool:
    """W&B leaves ``run-ID.wandb.synced`` beside a run file it uploaded."""
    return any(run.glob("*.wandb.synced"))


def check_reachable() -> str:
    """The W&B server's URL, after a TCP connection to it worked within ``CONNECT_S``:
    ``wandb sync`` itself retries for minutes when there is no network."""
    url = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=CONNECT_S).close()
    except OSError as err:
        raise CnnlabError(f"W&B server {url}: cannot connect ({err.strerror or err}); allowed: a "
                          "machine that reaches it (set WANDB_BASE_URL for your own server); "
                          "nothing was synced") from None
    return url


def sync_run(run: Path, timeout: float) -> str | None:
    """Upload one offline run with W&B's own ``wandb sync``; None when it worked, else why not."""
    cli = shutil.which("wandb", path=str(Path(sys.executable).parent)) or shutil.which("wandb")
    if cli is None:
        return "the wandb command is not installed"
    try:
        done = subprocess.run([cli, "sync", str(run)], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"no answer within {timeout:.0f} s"
    if is_synced(run):
        return None
    lines = [line for line in (done.stderr + done.stdout).splitlines()
             if "error" in line.lower()] or (done.stderr + done.stdout).splitlines() or ["failed"]
    return lines[-1].strip()[:200]


def sync_roots(targets: list[str]) -> list[Path]:
    """The folders to look for runs in: each target as a folder or a study under reports/
    (an unknown target is an error); without targets, reports/ and runs/ where they exist."""
    roots = []
    for target in targets or ["reports", "runs"]:
        path = Path(target)
        if not path.is_dir() and (Path("reports") / target).is_dir():
            path = Path("reports") / target
        if not path.is_dir():
            if targets:
                raise CnnlabError(f"sync: {target}: no such folder or study under reports/; "
                                  "allowed: a study name (reports/NAME) or a folder of runs")
            continue
        roots.append(path)
    return roots


def sync(runs: list[Path], timeout: float) -> tuple[str, list[str]]:
    """Upload the runs not synced yet: a summary line, and ``RUN: why`` for each that did not
    arrive; an error, with nothing synced, when the server is unreachable."""
    todo = [r for r in runs if not is_synced(r)]
    if not todo:
        return f"nothing to sync ({len(runs)} runs, all synced)", []
    url = check_reachable()
    failed = [f"{run}: {why}" for run in todo if (why := sync_run(run, timeout)) is not None]
    return f"synced {len(todo) - len(failed)} of {len(todo)} offline runs to {url}", failed
