"""``cnnlab sync``: upload the offline W&B runs of studies and fits with W&B's own ``wandb sync``,
then ask the server whether each one arrived whole.

One ``wandb sync`` process takes every run (it keeps the folders of one resumed run in order), to
the server W&B itself would use (``WANDB_BASE_URL``, else W&B's settings from ``wandb login
--host``, else its default). ``wandb sync`` marks a run synced even when an artifact failed, and
logs its retries at INFO, so neither its marker nor its log decides: after the upload cnnlab asks
the server for the run's files and its artifacts (each logged artifact committed, with all its
files), and writes its verdict beside W&B's marker; the next sync retries what did not arrive.
While W&B retries, a line says what and since when; a run that makes no progress for
``--timeout`` seconds is given up.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import netrc
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
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
WHERE = re.compile(r"View run .* at \S+/([^/\s]+)/([^/\s]+)/runs/([^/\s]+)\s*$")  # entity, project, id
UNFINISHED = (".cnnlab-partial", ".cnnlab-old")  # a run being built or being replaced
KEEP_LOGS = 5  # sync log folders kept in the cache, the newest
NOTE_S = 15.0  # silence after which a line says what W&B is retrying
CHECK = """query CnnlabSyncCheck($entity: String!, $project: String!, $run: String!) {
  project(entityName: $entity, name: $project) { run(name: $run) {
    files(first: 10000) { edges { node { name } } }
    outputArtifacts(first: 1000) { edges { node {
      state digest fileCount artifactSequence { name } } } } } } }"""


def offline_runs(roots: list[Path]) -> list[Path]:
    """Every offline W&B run folder under ``roots``, oldest first (a resumed summary run's
    folders then sync in the order they were written). The walk does not enter a run folder
    (its media), a checkpoint folder, or a run still being built (``.NAME.cnnlab-partial``:
    its W&B run is still written; it is synced once it finished): hundreds of runs list in
    well under a second. A run folder that is a link is not one: sync writes its marks into
    the folder, which would land in the link's target, outside the tree synced."""
    runs: set[Path] = set()
    for root in roots:
        for folder, dirs, _ in os.walk(root):
            found = [d for d in dirs if d.startswith(OFFLINE)]
            runs.update(Path(folder) / d for d in found if not (Path(folder) / d).is_symlink())
            dirs[:] = [d for d in dirs if not d.startswith(OFFLINE) and d != "checkpoints"
                       and not d.endswith(UNFINISHED)]
        if root.name.startswith(OFFLINE) and not root.is_symlink():
            runs.add(root)
    return sorted(runs, key=lambda p: (p.name.split("-")[2], str(p)))


def _run_file(run: Path) -> Path | None:
    """The run's ``run-ID.wandb`` (a link is none: W&B's ``.synced`` mark follows it)."""
    return next((p for p in run.iterdir() if p.suffix == ".wandb" and not p.is_symlink()), None)


def is_synced(run: Path) -> bool:
    """cnnlab's record says the server confirmed the run whole after its last upload (W&B's
    own ``.synced`` marker alone does not: it is written when an artifact failed too)."""
    wandb_file = _run_file(run)
    if wandb_file is None:
        return False
    record = wandb_file.with_name(wandb_file.name + RECORD)
    try:
        return json.loads(record.read_text())["complete"] is True
    except (OSError, ValueError, KeyError, TypeError):
        return False  # none, or unreadable: sync it (again)


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
    _prune_logs(parent)
    return Path(tempfile.mkdtemp(prefix=f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-",
                                 dir=parent))


LOG_NAME = re.compile(r"\d{8}-\d{6}-\d+-[A-Za-z0-9_]{8}")  # what ``log_folder`` names them


SYNC_WRITES = {"wandb-sync.out", "wandb"}  # all a sync puts in its log folder


def _prune_logs(parent: Path) -> None:
    """Keep the newest ``KEEP_LOGS - 1`` sync log folders (one a day piled up 15). Removed
    only: a real folder (not a link) named as ``log_folder`` names them, in cnnlab's cache,
    holding nothing but what a sync writes (``wandb sync``'s logs; a file of anyone else's
    keeps the folder)."""
    made = sorted((p for p in parent.iterdir()
                   if LOG_NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink()),
                  key=lambda p: p.lstat().st_mtime_ns)  # made in one second: the name can't say
    for old in made[:max(len(made) - (KEEP_LOGS - 1), 0)]:
        if {entry.name for entry in old.iterdir()} <= SYNC_WRITES and not (
                old / "wandb").is_symlink():
            shutil.rmtree(old, ignore_errors=True)  # links inside are unlinked, never followed


def _errors(logs: Path, level: str = "ERROR") -> dict[str, list[str]]:
    """``wandb sync``'s log lines of ``level`` (ERROR; INFO: its retries too), by the .wandb
    file they concern: W&B's own words for what went wrong."""
    found: dict[str, list[str]] = {}
    for log in logs.rglob("debug-sync*.log"):
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                entry = json.loads(line)
                message = str(entry.get("msg", ""))
                if entry.get("error"):
                    message = f"{message}: {entry['error']}"
                if entry.get("level") == level and not message.startswith(BENIGN):
                    found.setdefault(str(entry.get("sync_path", "")), []).append(message)
    return found


def _api_key(url: str) -> str | None:
    """The key ``wandb sync`` logs in with: ``WANDB_API_KEY``, else ``~/.netrc``'s for the host
    (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    try:
        found = netrc.netrc().authenticators(urlsplit(url).hostname or "")
    except (OSError, netrc.NetrcParseError):
        return None
    return found[2] if found else None


def confirm(url: str, where: tuple[str, str, str], run: Path, wandb_file: Path) -> list[str]:
    """What the server lacks of ``run`` (uploaded to entity, project, run id ``where``): each
    file under its ``files/``, each artifact it logged, committed with all its files; empty
    when the server has it all."""
    from cnnlab.tracking.records import logged_artifacts  # W&B's protobufs: only when syncing

    key = _api_key(url)
    if key is None:
        return ["no W&B API key to ask the server with (WANDB_API_KEY or ~/.netrc)"]
    entity, project, run_id = where
    body = json.dumps({"query": CHECK, "operationName": "CnnlabSyncCheck",
                       "variables": {"entity": entity, "project": project, "run": run_id}})
    token = base64.b64encode(f"api:{key}".encode()).decode()
    request = urllib.request.Request(f"{url.rstrip('/')}/graphql", body.encode(), headers={
        "Content-Type": "application/json", "Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(request, timeout=4 * CONNECT_S) as answer:
            found = (json.loads(answer.read()).get("data") or {}).get("project") or {}
    except (OSError, ValueError) as err:
        return [f"the server did not confirm the run ({err})"]
    node = found.get("run")
    if node is None:
        return [f"the server has no run {entity}/{project}/{run_id}"]
    there = {e["node"]["name"] for e in node["files"]["edges"]}
    local = run / "files"
    missing = sorted(p.relative_to(local).as_posix() for p in local.rglob("*")
                     if p.is_file() and p.relative_to(local).as_posix() not in there)
    lacks = [f"{len(missing)} files did not arrive ({', '.join(missing[:3])})"] if missing else []
    committed = {a["node"]["digest"]: int(a["node"]["fileCount"])
                 for a in node["outputArtifacts"]["edges"] if a["node"]["state"] == "COMMITTED"}
    for digest, (name, files) in logged_artifacts(wandb_file).items():
        if committed.get(digest, -1) < files:
            lacks.append(f"artifact {name} is not committed with its {files} files")
    return lacks


class _Watch:
    """Gives up on ``wandb sync`` once no run finished for ``timeout`` seconds (a hung or
    endlessly retried upload), and says every ``NOTE_S`` seconds of silence what W&B is
    retrying and since when."""

    def __init__(self, process: subprocess.Popen[str], logs: Path, timeout: float,
                 progress: Callable[[str], None]) -> None:
        self.process, self.logs, self.timeout, self.progress = process, logs, timeout, progress
        self.last = self.noted = time.monotonic()
        self.gave_up = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def moved(self) -> None:
        """A run finished: the next one gets its whole ``timeout``."""
        self.last = self.noted = time.monotonic()

    def _watch(self) -> None:
        while not self.stop.wait(1.0):
            quiet = time.monotonic() - self.last
            if quiet > self.timeout:
                self.gave_up = True
                self.progress(f"gave up: no run finished for {self.timeout:g} s (--timeout); "
                              "the runs left are retried by the next cnnlab sync")
                self.process.kill()
                return
            if time.monotonic() - self.noted >= NOTE_S:
                self.noted = time.monotonic()
                retries = [m for ms in _errors(self.logs, "INFO").values() for m in ms
                           if "retrying" in m]
                doing = (f"W&B retrying ({len(retries)} so far; last: {retries[-1]})"
                         if retries else "W&B still sending")
                self.progress(f"  … {doing} for {quiet:.0f} s; gives up at {self.timeout:g} s "
                              "(--timeout)")

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


@dataclass(frozen=True)
class Outcome:
    """What one ``cnnlab sync`` did: the server ("" when there was nothing to sync), the runs
    that did not arrive whole with why for each, the runs that did, W&B's log folder."""

    url: str
    failed: dict[Path, str]
    synced: list[Path]
    logs: Path


def sync(runs: list[Path], timeout: float, progress: Callable[[str], None] = print) -> Outcome:
    """Upload the runs not confirmed yet in one ``wandb sync``, then ask the server for each
    one; an error, with nothing synced, when the server is unreachable. ``progress`` gets a
    line per run, and lines while W&B retries."""
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
    progress(f"sending {len(paths)} runs to {url}; one that makes no progress for {timeout:g} s "
             "is given up (--timeout)")
    process = subprocess.Popen([cli, "sync", "--include-synced", *paths], cwd=logs,
                               env={**os.environ, "WANDB_BASE_URL": url}, text=True,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    watch = _Watch(process, logs, timeout, progress)
    assert process.stdout is not None
    done, where = 0, {}
    try:
        with (logs / "wandb-sync.out").open("w") as out:
            for line in process.stdout:
                out.write(line)
                if sent := WHERE.search(line):
                    where[sent[3]] = (sent[1], sent[2], sent[3])
                if finished := FINISHED.search(line):
                    done += 1
                    watch.moved()
                    progress(f"[{done}/{len(todo)}] sent {(logs / finished[1]).resolve()}")
        process.wait()
    finally:
        watch.close()
        if process.poll() is None:
            process.kill()
            process.wait()
    errors = _errors(logs)
    failed: dict[Path, str] = {}
    for run, wandb_file in files.items():
        if wandb_file is None:
            failed[run] = "no run-ID.wandb file in the folder"
            continue
        run_id = wandb_file.stem.removeprefix("run-")
        lacks = (confirm(url, where[run_id], run, wandb_file) if run_id in where
                 else [f"wandb sync did not reach it (see {logs})"])
        found = errors.get(str(wandb_file.resolve()), [])
        said = [m for m in found if not m.startswith("api: HTTP error")] or found  # the specific
        why = [*lacks, *said] if lacks else []
        record = {"complete": not why, "server": url, "errors": why[:5], "log": str(logs)}
        write_atomic(wandb_file.with_name(wandb_file.name + RECORD), json.dumps(record, indent=1))
        if why:
            failed[run] = " ".join("; ".join(why[:2]).split())[:300]  # W&B's lines fold
    return Outcome(url, failed, [r for r in todo if r not in failed], logs)
