"""``cnnlab sync`` against W&B-compatible servers on 127.0.0.1 (fake_wandb): what arrives, what
failed, the retry, the server W&B's settings name, and nothing written into the current folder."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_wandb import FakeWandb
from test_reliability import _alive, _descendants

import cnnlab.tracking.sync as sync_module
from cnnlab.tracking.sync import KEEP_LOGS, LOG_NAME, log_folder
from tests.conftest import FAST

ROOT = Path(__file__).resolve().parent.parent
KEY = "k" * 40  # wandb sync wants credentials; the fake server takes any


def _hashes(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (the runs, their W&B folders, the cache) by its SHA-256."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file() and not p.is_symlink()}


@pytest.fixture
def runs(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two offline fits (each logs a model artifact), synced from an empty current folder."""
    monkeypatch.delenv("WANDB_MODE", raising=False)  # cnnlab's default: offline
    for name in ("a", "b"):
        fast = [o for o in FAST if o != "wandb.mode=disabled"]
        assert cli("fit", "--out", tmp_path / "runs" / name, *fast)[0] == 0
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path / "runs"


@pytest.mark.slow
def test_a_failed_artifact_is_reported_per_run_exit_1_and_retried_by_the_next_sync(
        cli, runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``wandb sync`` marked such a run synced; cnnlab said "synced 1 of 1" and never retried."""
    before = _hashes(runs.parent)
    with FakeWandb(fail_artifacts=True).serving() as server:
        monkeypatch.setenv("WANDB_BASE_URL", server.url)
        status, out, err = cli("sync", runs)
    assert status == 1, err
    assert len(server.history) == 2 and all(server.history.values())  # the history arrived
    assert server.artifacts == []
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 2 and all("failed to log artifact" in line for line in failed), err
    assert f"synced 0 of 2 offline runs to {server.url}" in out
    assert out.count("] sent ") == 2  # a progress line per run

    status, out, err = cli("sync", "--dry-run", runs)
    assert status == 0 and "2 offline W&B runs to sync, 0 already synced" in out

    # W&B's .synced markers are left by that attempt; now the artifact files' uploads fail,
    # which W&B retries at INFO (no ERROR line): the server's answer decides, not the markers
    assert len(list(runs.rglob("*.wandb.synced"))) == 2
    monkeypatch.setattr(sync_module, "NOTE_S", 2.0)
    with FakeWandb(fail_uploads=True).serving() as server:
        monkeypatch.setenv("WANDB_BASE_URL", server.url)
        status, out, err = cli("sync", runs, "--timeout", "8")
    assert status == 1, err
    assert server.artifacts == [] and "CnnlabSyncCheck" in server.operations
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 2, err
    assert all(re.search(r"artifact model-\w+ is not committed with its 2 files", x) for x in failed)
    assert re.search(r"W&B retrying \(\d+ so far; last: api: retrying error: unexpected HTTP "
                     r"status 500 Internal Server Error\) for \d+ s; gives up at 8 s", out), out
    assert "gave up: no run finished for 8 s (--timeout)" in out
    assert all(json.loads(r.read_text())["complete"] is False
               for r in runs.rglob("*.cnnlab-sync.json"))
    status, out, err = cli("sync", "--dry-run", runs)
    assert status == 0 and "2 offline W&B runs to sync, 0 already synced" in out

    with FakeWandb().serving() as server:
        monkeypatch.setenv("WANDB_BASE_URL", server.url)
        status, out, err = cli("sync", runs)
    assert status == 0, err
    assert sorted(server.artifacts) == sorted(f"model-{r}" for r in server.runs)
    assert f"synced 2 of 2 offline runs to {server.url}" in out
    status, out, _ = cli("sync", runs)
    assert status == 0 and "nothing to sync: all 2 offline W&B runs are synced" in out
    assert list(Path.cwd().iterdir()) == []  # W&B's sync logs went to the cache
    after = _hashes(runs.parent)
    assert {p: h for p, h in after.items() if p in before} == before  # nothing changed or lost
    added = {Path(p).name.split(".", 1)[-1] for p in set(after) - set(before)
             if "/cache/" not in p and "/files/" not in p}  # files/: what wandb sync uploads
    assert added == {"wandb.synced", "wandb.syncstate", "wandb.cnnlab-sync.json"}, added
    assert list((runs.parent / "cache" / "cnnlab" / "wandb-sync").glob("*/wandb/logs/debug-sync*"))


@pytest.mark.slow
def test_the_server_is_the_one_wandb_login_host_configured(runs: Path, tmp_path: Path) -> None:
    """Without WANDB_BASE_URL, W&B's settings file names the server (it used to be ignored)."""
    home = tmp_path / "home"
    (home / ".config" / "wandb").mkdir(parents=True)
    with FakeWandb().serving() as server:
        (home / ".config" / "wandb" / "settings").write_text(f"[default]\nbase_url = {server.url}\n")
        env = {k: v for k, v in os.environ.items() if k not in ("WANDB_BASE_URL", "WANDB_CONFIG_DIR")}
        done = subprocess.run([sys.executable, "-m", "cnnlab", "sync", str(runs / "a")],
                              env={**env, "HOME": str(home), "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=120, cwd=Path.cwd())
    assert done.returncode == 0, done.stderr
    assert f"synced 1 of 1 offline runs to {server.url}" in done.stdout
    assert len(server.runs) == 1 and len(server.artifacts) == 1
    record = next((runs / "a").rglob("*.cnnlab-sync.json"))
    assert json.loads(record.read_text())["complete"] is True


def test_dry_run_lists_hundreds_of_runs_without_loading_wandb(tmp_path: Path) -> None:
    for i in range(300):
        run = (tmp_path / "reports" / "s" / "trials" / f"a{i}" / "wandb"
               / f"offline-run-20260101_0000{i:02d}-id{i}")
        (run / "files" / "media").mkdir(parents=True)
        (run / f"run-id{i}.wandb").write_bytes(b"")
        (run / f"run-id{i}.wandb.synced").write_bytes(b"")  # W&B's marker: not a verdict
        if i % 3 == 0:  # the server confirmed these
            (run / f"run-id{i}.wandb.cnnlab-sync.json").write_text('{"complete": true}')
    code = ("import sys; from cnnlab.cli import main; status = main(['sync', '--dry-run']); "
            "print(status, 'wandb' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "200 offline W&B runs to sync, 100 already synced" in done.stdout
    assert done.stdout.split()[-2:] == ["0", "False"]


def test_two_syncs_in_one_second_never_share_a_log_folder(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A second sync read the first one's errors as its own when both began in one second."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first, second = log_folder(), log_folder()
    assert first != second and first.parent == second.parent == tmp_path / "cnnlab" / "wandb-sync"


def test_the_cache_keeps_the_newest_sync_logs_and_nothing_else(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """One log folder per sync piled up (15 after a day). Only folders a sync made, holding
    only what it writes, are removed: every other file under the cache (and a link's target
    outside it) is byte for byte as it was."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = log_folder()  # this sync's own folder, the newest of all
    parent = first.parent
    made = []
    for i in range(KEEP_LOGS + 3):  # what earlier syncs left: their output and W&B's logs
        folder = parent / f"20260101-0000{i:02d}-1-abcdefg{i}"
        (folder / "wandb" / "logs").mkdir(parents=True)
        (folder / "wandb-sync.out").write_text("wandb: Syncing 1 run(s)\n")
        (folder / "wandb" / "logs" / "debug-sync.log").write_text("{}\n")
        os.utime(folder, (1e9 + i, 1e9 + i))
        made.append(folder)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("someone's")
    (made[0] / "wandb" / "logs" / "link").symlink_to(outside, target_is_directory=True)
    (made[1] / "notes.txt").write_text("mine, in an old log folder")  # keeps that folder
    os.utime(made[1], (1e9 + 1, 1e9 + 1))
    mine = parent / "notes"  # not named as cnnlab names its folders: never touched
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    linked = parent / "20000101-000000-1-abcdefgh"  # named like one, but a link
    linked.symlink_to(mine)
    os.utime(first, (2e9, 2e9))
    # the newest KEEP_LOGS - 1 stay (the new one makes KEEP_LOGS); of the older ones, the one
    # holding a file of mine stays too
    pruned = set(made[:KEEP_LOGS + 3 - (KEEP_LOGS - 2)]) - {made[1]}
    before = {p: h for p, h in _hashes(tmp_path).items()
              if not any(p.startswith(f"{old}/") for old in pruned)}
    newest = log_folder()
    kept = {p for p in parent.iterdir() if LOG_NAME.fullmatch(p.name)}
    assert kept == {*set(made) - pruned, first, newest, linked}, (
        sorted(p.name for p in kept), sorted(p.name for p in pruned))
    assert _hashes(tmp_path) == before and linked.is_symlink()
def test_runs_still_being_built_are_not_listed(tmp_path: Path) -> None:
    """A tune still running has its folds' W&B runs inside .fold0.cnnlab-partial/."""
    for folder in ("trials/0000/fold0", "trials/0001/.fold0.cnnlab-partial"):
        run = tmp_path / "reports" / "s" / folder / "wandb" / "offline-run-20260101_000000-abc"
        run.mkdir(parents=True)
        (run / "run-abc.wandb").write_bytes(b"")
    code = "from cnnlab.cli import main; main(['sync', '--dry-run'])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "1 offline W&B runs to sync, 0 already synced" in done.stdout, done.stdout
    assert "cnnlab-partial" not in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_sync_is_one_line_and_leaves_no_process(
        runs: Path, tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C (or kill -9) while W&B retries a failing upload: one line and status 130, no
    `wandb sync` left uploading after its parent, and no run recorded as complete."""
    with FakeWandb(fail_uploads=True).serving() as server:
        env = {**os.environ, "WANDB_BASE_URL": server.url, "PYTHONPATH": str(ROOT)}
        err = tmp_path / "stderr"
        with err.open("w") as stream:
            proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "sync", str(runs)], env=env,
                                    cwd=Path.cwd(), stdout=subprocess.DEVNULL, stderr=stream)
        deadline = time.monotonic() + 60
        while not [pid for pid in _descendants(proc.pid) if b"sync" in _cmdline(pid)]:
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
        time.sleep(2)  # W&B is retrying the artifact files by now
        started = _descendants(proc.pid)
        proc.send_signal(sig)
        proc.wait(timeout=30)
        gone = time.monotonic() + 5
        while (left := {pid for pid in started if _alive(pid)}) and time.monotonic() < gone:
            time.sleep(0.1)
    assert not left, [_cmdline(pid)[:80] for pid in left]
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        lines = err.read_text().splitlines()
        assert lines == ["cnnlab: stopped by SIGINT; finished work is kept: rerun the same "
                         "command to resume"], lines
    assert not any(json.loads(r.read_text())["complete"] for r in runs.rglob("*.cnnlab-sync.json"))


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
