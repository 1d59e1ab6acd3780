"""Reliability: kill-and-resume, diverging runs, offline W&B safety, four concurrent workers."""

import csv
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
import warm
from conftest import FAST, Postgres
from optuna.trial import TrialState
from PIL import Image
from test_ablation import complete_keys, trials, write_spec
from test_search import trials as search_trials
from test_search import write_spec as write_search_spec

from cnnlab.errors import CnnlabError
from cnnlab.outputs.ownership import Manifest
from cnnlab.studies.engine.storage import open_storage
from cnnlab.studies.engine.store import Store

ENV = {**os.environ, "WANDB_MODE": "disabled"}
KILLS = 3  # SIGKILLs per study, each at a random moment after at least one more trial finished


def _count(finished: Callable[[], int]) -> int:
    try:
        return finished()
    except (CnnlabError, FileNotFoundError, KeyError):  # no storage or study yet
        return 0


def kill_and_resume(command: list[str], finished: Callable[[], int], seed: int) -> int:
    """Start ``command`` and SIGKILL it at random points (up to ``KILLS`` times, each after one
    more finished trial plus a random 0–0.5 s), then rerun it to completion; returns the kills."""
    rng = random.Random(seed)
    kills = 0
    for _ in range(KILLS):
        proc = warm.Command(command, ENV)
        before, deadline = _count(finished), time.monotonic() + 120
        while proc.poll() is None and _count(finished) <= before and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(rng.uniform(0, 0.5))
        if proc.poll() is not None:  # it finished the whole study before this kill
            break
        proc.send_signal(signal.SIGKILL)
        proc.communicate(60)
        kills += 1
    done = warm.run(command, ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    return kills


def assert_files_intact(out: Path) -> int:
    """Every result file parses (writes are atomic); returns how many were checked."""
    checked = 0
    for path in out.rglob("*"):
        if path.name.startswith(".") or "wandb" in path.parts or not path.is_file():
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".csv":
            assert list(csv.reader(path.open()))
        elif path.suffix == ".png":
            Image.open(path).verify()
        else:
            continue
        checked += 1
    return checked


def _without_time(results: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "fit_seconds"}
            for row in csv.DictReader(results.open())]


@pytest.mark.slow
def test_ablation_survives_repeated_sigkills(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, seeds=3, arms="norm only")  # 3 arms × 3 seeds
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "cnnlab.cli", "ablate", str(spec), "--out", str(out)]
    kills = kill_and_resume(command, lambda: len(complete_keys(out)), seed=1)
    assert kills >= 2
    study = Store.load(open_storage(str(out / "study.journal"), readonly=True), "tiny")
    keys = complete_keys(out)
    assert len(keys) == 9 and len(set(keys)) == 9  # every arm × seed exactly once
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert len(study.get_trials(states=(TrialState.FAIL,))) <= kills  # at most one per kill
    assert assert_files_intact(out) >= 9 + 2  # trial metrics, results.csv, report plots

    clean = tmp_path / "clean"  # the same spec, never interrupted
    command = [sys.executable, "-m", "cnnlab.cli", "ablate", str(spec), "--out", str(clean)]
    assert warm.run(command, ENV, timeout=300).returncode == 0
    assert _without_time(out / "results.csv") == _without_time(clean / "results.csv")
    table = [[line for line in (d / "report.md").read_text().splitlines()
              if line.startswith("| model.norm")] for d in (out, clean)]
    assert table[0] == table[1] and len(table[0]) == 6  # 3 arms in the arms and mechanisms tables


@pytest.mark.slow
def test_search_survives_repeated_sigkills(tmp_path: Path) -> None:
    spec = write_search_spec(tmp_path)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cnnlab.cli", "tune", str(spec), "--out", str(out),
               "--trials", "8"]
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    kills = kill_and_resume(command, lambda: sum(t.state in states for t in search_trials(out)),
                            seed=2)
    assert kills >= 2
    finished = [t for t in search_trials(out) if t.state in states]
    assert len(finished) == 8 and len({t.number for t in finished}) == 8  # the requested count
    configs = {tuple(sorted(t.params.items())) for t in finished}
    assert len(configs) == 8  # every resume went on searching; none repeated a configuration
    assert not [t for t in search_trials(out) if t.state == TrialState.RUNNING]
    rows = [r for r in csv.DictReader((out / "trials.csv").open()) if r["state"] != "FAIL"]
    assert sorted(int(r["number"]) for r in rows) == sorted(t.number for t in finished)
    for t in finished:
        (row,) = [r for r in rows if int(r["number"]) == t.number]
        if t.state == TrialState.COMPLETE:
            assert float(row["cv_mean"]) == pytest.approx(t.value)
    assert assert_files_intact(out) >= 3  # trials.csv, refit metrics, plots
    report = (out / "trials.csv").read_text()
    again = warm.run(command, ENV, timeout=300)
    assert again.returncode == 0, again.stderr  # nothing left to run: the same trial set
    assert (out / "trials.csv").read_text() == report
    assert len([t for t in search_trials(out) if t.state in states]) == 8


def test_huge_learning_rate_diverges_instead_of_crashing(cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    status, _, err = cli("fit", "--out", out, *FAST, "trainer.max_epochs=5", "optim.lr=10")
    assert status == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["diverged"] is True and metrics["epochs"] < 5  # stopped early


@pytest.mark.slow
def test_a_diverging_arm_is_a_failed_outcome_and_the_ablation_goes_on(cli, tmp_path: Path
                                                                      ) -> None:
    spec = tmp_path / "lr.yaml"
    spec.write_text("name: lr\noverrides: [trainer.max_epochs=3, \"model.channels=[8]\", "
                    "\"model.hidden_units=[16]\", data.batch_size=128, optim.scheduler=none]\n"
                    "factors: {optim.lr: [0.01, 10.0]}\nseeds: 2\n")
    out = tmp_path / "out"
    status, stdout, err = cli("ablate", spec, "--out", out)
    assert status == 0, err
    study = Store.load(open_storage(str(out / "study.journal"), readonly=True), "lr")
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:  # an outcome of its arm, recorded as such, entered at chance accuracy
        diverged = t.user_attrs["arm"] == "optim.lr=10.0"
        assert t.user_attrs["failure"] == ("diverged" if diverged else None)
        assert not diverged or t.value == pytest.approx(t.user_attrs["chance_acc"])
    assert "| optim.lr=10.0 | 2 | 2 (2 diverged) |" in (out / "report.md").read_text()
    assert "(2 seeds, 2 (2 diverged) failed)" in stdout
    assert cli("ablate", spec, "--out", out)[0] == 0  # a rerun does not redo diverged trials
    assert len(study.get_trials()) == 4


@pytest.mark.slow
def test_offline_by_default_with_a_fake_key_no_network_and_stdin_closed(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"WANDB_API_KEY": "0123456789abcdef" * 2 + "01234567",  # a well-formed fake key
            "WANDB_BASE_URL": "http://127.0.0.1:9"}  # nothing listens: no network for W&B
    out = tmp_path / "run"
    command = [sys.executable, "-m", "cnnlab.cli", "fit", "--out", str(out),
               *[o for o in FAST if not o.startswith("wandb.")]]
    start = time.monotonic()
    # stdin closed (not just empty): a login prompt would fail or hang; 60 s is several normal fits
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: os.close(0))
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "metrics.json").read_text())["test_acc"] > 0.3
    assert len(list(out.glob("wandb/offline-run-*/run-*.wandb"))) == 1
    assert time.monotonic() - start < 60


FOUR_ARMS = """
name: four
overrides: [trainer.max_epochs=1, "model.channels=[8]", "model.hidden_units=[16]", data.batch_size=128]
factors: {model.norm: [batch, layer, group, none]}
seeds: 2
"""


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["journal", "postgresql"])
def test_four_workers_share_one_ablation(cli, tmp_path: Path, storage: str, request) -> None:
    url = (str(tmp_path / "four.journal") if storage == "journal" else
           request.getfixturevalue("postgres_url"))
    spec = tmp_path / "four.yaml"
    name = f"four-{tmp_path.name}"  # a fresh study in the shared PostgreSQL cluster
    spec.write_text(FOUR_ARMS.replace("name: four", f"name: {name}"))
    status, _, err = cli("ablate", spec, "--out", tmp_path / "out", "--storage", url,
                         "--workers", "4")
    assert status == 0, err
    all_trials = Store.load(open_storage(url, readonly=True), name).get_trials()
    done = [t for t in all_trials if t.state == TrialState.COMPLETE]
    keys = [t.user_attrs["key"] for t in done]
    assert len(keys) == 8 and len(set(keys)) == 8  # unique, none lost
    assert len({t.user_attrs["worker"] for t in done}) >= 2
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in all_trials)
    assert all("note" in t.user_attrs for t in all_trials if t.state == TrialState.FAIL)


@pytest.mark.slow
def test_four_workers_share_one_search_on_postgresql(cli, tmp_path: Path, postgres_url: str) -> None:
    name = f"search-{tmp_path.name}"
    status, _, err = cli("tune", write_search_spec(tmp_path), "--out", tmp_path / "out",
                         "--storage", postgres_url, "--study", name, "--trials", "6",
                         "--workers", "4")
    assert status == 0, err
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    finished = [t for t in search_trials(tmp_path, postgres_url, name) if t.state in states]
    assert len(finished) == 6 and len({t.number for t in finished}) == 6
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 6


class _Payload:
    """A pickle that would run a shell command when unpickled without ``weights_only``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoints_load_weights_only(cli, tmp_path: Path) -> None:
    import torch

    from cnnlab.config import load_config, to_yaml

    run_dir, marker = tmp_path / "run", tmp_path / "pwned"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(load_config()))
    torch.save({"state_dict": {}, "extra": _Payload(marker)}, run_dir / "checkpoints" / "best.ckpt")
    status, _, err = cli("export", run_dir)
    assert status == 2 and "unreadable checkpoint; allowed" in err
    assert not marker.exists() and not (run_dir / "model.pt").exists()


@pytest.mark.slow
def test_study_and_arm_names_cannot_escape_the_reports_folder(cli, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    spec = work / "spec.yaml"
    spec.write_text('name: "../../escape"\noverrides: [trainer.max_epochs=1, "model.channels=[8]"]\n'
                    'factors:\n  reg:\n    "../../up": {reg.kind: l2, reg.strength: 1.0e-3}\nseeds: 1\n')
    status, _, err = cli("ablate", spec)
    assert status == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # nothing beside work/
    (study,) = (work / "reports").iterdir()
    assert study.name == "escape"
    (arm,) = (study / "trials").iterdir()
    assert "/" not in arm.name and ".." not in arm.name and (arm / "seed0" / "metrics.json").is_file()
    search = work / "search.yaml"
    search.write_text("name: s\nfolds: 2\ntrials: 1\noverrides: [trainer.max_epochs=1]\n"
                      "space: {optim.lr: {type: float, low: 0.001, high: 0.01}}\n")
    status, _, err = cli("tune", search, "--study", "../../../tmp/evil")
    assert status == 0, err
    assert sorted(p.name for p in (work / "reports").iterdir()) == ["escape", "tmp_evil"]


@pytest.mark.slow
def test_a_silent_database_server_is_reported_within_ten_seconds(cli, tmp_path: Path) -> None:
    import socket

    with socket.socket() as silent:  # accepts TCP connections, never answers: a hung server
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql://u@127.0.0.1:{silent.getsockname()[1]}/db"
        spec = write_spec(tmp_path)
        start = time.monotonic()
        status, _, err = cli("ablate", spec, "--out", tmp_path / "out", "--storage", url)
        elapsed = time.monotonic() - start
    assert status == 2 and f"--storage {url}: cannot open" in err and len(err.splitlines()) == 1
    assert elapsed < 10
    assert not (tmp_path / "out").exists()


def test_workers_opening_an_empty_postgresql_database_at_once(postgres_url: str) -> None:
    import threading

    import psycopg

    name = f"fresh_{os.getpid()}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    url = f"{postgres_url.rsplit('/', 1)[0]}/{name}"
    barrier, errors = threading.Barrier(4), []

    def open_at_once() -> None:
        barrier.wait()
        try:
            open_storage(url)
        except CnnlabError as err:  # before the fix: duplicate key in Optuna's schema creation
            errors.append(str(err))

    threads = [threading.Thread(target=open_at_once) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").is_dir() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def _workers(out: Path, name: str = "tiny") -> set[int]:
    """The pids of the processes that ran (or run) the study's trials (none yet: empty)."""
    try:
        study = Store.load(open_storage(str(out / "study.journal"), readonly=True), name)
    except (CnnlabError, FileNotFoundError, KeyError):
        return set()
    return {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in study.get_trials()
            if "worker" in t.user_attrs}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_stopped_fit_exits_non_zero_with_one_line_and_leaves_nothing(tmp_path: Path,
                                                                      sig: signal.Signals) -> None:
    """Inside Lightning's fit, where Lightning turns an interrupt into ``sys.exit(1)`` (and on
    its own let SIGTERM finish the run and exit 0). A SIGKILL leaves its staging folder, which
    the rerun clears."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "cnnlab.cli", "fit", "--out", str(out), *FAST,
               "trainer.max_epochs=200"]
    proc = warm.Command(command, ENV)
    staging = tmp_path / ".run.cnnlab-partial"
    deadline = time.monotonic() + 120
    while not (staging / "config.yaml").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)  # training has started
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGKILL:
        assert proc.returncode == -sig and not out.exists()
        short = [*command[:-1], "trainer.max_epochs=1"]
        done = warm.run(short, ENV, timeout=300)
        assert done.returncode == 0, done.stderr  # the killed fit's leftovers block nothing
        assert (out / "metrics.json").is_file() and not staging.exists()
        return
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"cnnlab: stopped by {sig.name}; finished work is kept: rerun the same command to resume")
    assert not out.exists() and not staging.exists()  # nothing half-written


STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGKILL)  # timeout/SLURM, Ctrl-C, kill -9


def _stop_and_resume(command: list[str], out: Path, study: str) -> None:
    """Run ``command`` (``--workers 2`` last) once per signal of ``STOPS``, each run stopped by
    its signal once both of its workers run trials: the exit status, the one line, and that no
    worker is left; then rerun it with one worker to the end. Each run resumes the last."""
    for sig in STOPS:
        before = _workers(out, study)
        proc = warm.Command(command, ENV)
        deadline = time.monotonic() + 120
        while (proc.poll() is None and len(_workers(out, study) - before) < 2
               and time.monotonic() < deadline):
            time.sleep(0.1)
        assert proc.poll() is None, f"the study finished before {sig.name}"
        workers = _workers(out, study) - before
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == (-sig if sig == signal.SIGKILL else 128 + sig), err
        if sig != signal.SIGKILL:
            assert "Traceback" not in err
            assert err.strip().splitlines()[-1] == (f"cnnlab: stopped by {sig.name}; finished "
                                                    "work is kept: rerun the same command to "
                                                    "resume")
        gone = time.monotonic() + 15
        while any(_alive(pid) for pid in workers) and time.monotonic() < gone:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers), sig  # no worker outlives its command
    done = warm.run([*command[:-1], "1"], ENV, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_a_stopped_ablation_exits_non_zero_leaves_no_worker_and_resumes(tmp_path: Path) -> None:
    """What ``timeout``, ``kill``, SLURM and Ctrl-C send: TERM and INT stop with one line and
    128 + the signal, KILL with -9; no worker goes on alone; the rerun finishes the study."""
    spec = write_spec(tmp_path, seeds=2, arms="norm only")
    spec.write_text(spec.read_text().replace("trainer.max_epochs=1", "trainer.max_epochs=3"))
    out = tmp_path / "out"
    _stop_and_resume([sys.executable, "-m", "cnnlab.cli", "ablate", str(spec), "--out", str(out),
                      "--workers", "2"], out, "tiny")
    assert sorted(complete_keys(out)) == sorted(
        f"model.norm={n} | seed={s}" for n in ("batch", "layer", "none") for s in range(2))


@pytest.mark.slow
def test_a_stopped_search_exits_non_zero_leaves_no_worker_and_resumes(tmp_path: Path) -> None:
    """``cnnlab tune --workers 2`` stopped by TERM, INT or KILL of its main process: the exit
    status, no worker left, and a rerun that finishes exactly the requested trials."""
    out = tmp_path / "out"
    _stop_and_resume([sys.executable, "-m", "cnnlab.cli", "tune", str(write_search_spec(tmp_path)),
                      "--out", str(out), "--trials", "6", "--workers", "2"], out, "small")
    finished = [t for t in search_trials(out)
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6 and len({t.user_attrs["key"] for t in finished}) == 6


def test_a_lock_left_on_a_relative_journal_path_does_not_hang_the_rerun(tmp_path: Path) -> None:
    """A SIGTERM during a journal write used to leave ``study.journal.lock`` pointing at a
    relative path that never resolves, and every later writer spun on it for good."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "study.journal.lock").symlink_to("out/study.journal")  # dangling
    code = ("from cnnlab.studies.engine.storage import open_storage; import optuna; "
            "s = optuna.create_study(storage=open_storage('out/study.journal'), study_name='x'); "
            "s.enqueue_trial({}); print(len(s.get_trials()))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.split() == ["1"], done.stderr
    assert not (tmp_path / "out" / "study.journal.lock").is_symlink()  # released, not left


def test_clearing_a_dangling_journal_lock_touches_nothing_else(tmp_path: Path) -> None:
    """Only ``<journal>.lock`` pointing nowhere goes: another journal's dangling lock, a lock
    whose journal exists, a user's link of another name, and every file (inside and outside the
    folder, and what the links point to) stay as they were."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (outside / "data.csv").write_text("a,b\n")
    (out / "notes.txt").write_text("mine")
    (out / "study.journal.lock").symlink_to(tmp_path / "gone" / "study.journal")  # dangling: ours
    (out / "other.journal.lock").symlink_to(tmp_path / "gone" / "other.journal")  # not this journal's
    (out / "kept.journal").write_text("")
    (out / "kept.journal.lock").symlink_to(out / "kept.journal")  # a live writer's
    (out / "mine.lock").symlink_to(outside / "data.csv")
    links = {p.name: os.readlink(p) for p in out.iterdir() if p.is_symlink()}
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    open_storage(str(out / "study.journal"))
    assert not (out / "study.journal.lock").is_symlink()
    assert {p.name: os.readlink(p) for p in out.iterdir() if p.is_symlink()} == {
        k: v for k, v in links.items() if k != "study.journal.lock"}
    assert {p: p.read_bytes() for p in files} == files  # the new journal aside, nothing changed
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["notes.txt", "other.journal.lock", "kept.journal", "kept.journal.lock", "mine.lock",
         "study.journal"])


def _lock_sqlite(path: Path, seconds: float) -> subprocess.Popen:
    """Another process holding an exclusive lock on the database for ``seconds``."""
    code = ("import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); "
            f"time.sleep({seconds}); c.execute('COMMIT')")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.slow
def test_a_sqlite_lock_is_waited_out_then_reported_in_one_line(
        cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's own 5 s wait made a 20 s lock a traceback ("invalid data … exceeding max
    length"); cnnlab waits $CNNLAB_STORAGE_WAIT_S (default 60 s), then says so in one line."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    spec, db = write_spec(tmp_path, seeds=1, arms="norm only"), tmp_path / "s.db"
    args = ["ablate", spec, "--storage", f"sqlite:///{db}", "--workers", "1"]
    holder, start = _lock_sqlite(db, 8), time.monotonic()  # longer than SQLite's own wait
    status, _, err = cli(*args, "--out", tmp_path / "a")
    holder.wait()
    assert status == 0 and time.monotonic() - start > 7, err  # it waited the lock out
    monkeypatch.setenv("CNNLAB_STORAGE_WAIT_S", "1")
    holder = _lock_sqlite(db, 4)
    status, _, err = cli(*args, "--out", tmp_path / "b")
    holder.wait()
    assert status in (2, 75) and len(err.strip().splitlines()) == 1, err
    assert "database is locked" in err and "Traceback" not in err


def test_a_database_outage_is_one_line_and_a_temporary_failure(
        cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mid-study, Optuna reports a lost database as "invalid data … exceeding max length"."""
    def lost(args: object) -> None:
        try:
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, sqlite3.OperationalError(
                "server closed the connection unexpectedly"))
        except sqlalchemy.exc.OperationalError as err:
            raise optuna.exceptions.StorageInternalError("invalid data … max length") from err

    monkeypatch.setattr("cnnlab.cli.parser.cmd_report", lost)
    status, _, err = cli("report", "x")
    assert status == 75 and len(err.strip().splitlines()) == 1, err
    assert "database stopped answering (server closed the connection unexpectedly)" in err


@pytest.mark.slow
def test_a_postgresql_restart_is_waited_out(postgres: Postgres) -> None:
    """A server that restarts while a study holds pooled connections: the dead ones are found
    before use and new ones are retried with backoff ($CNNLAB_STORAGE_WAIT_S), so the call that
    meets the restart still answers instead of failing the study."""
    storage = open_storage(postgres.url)
    study = optuna.create_study(storage=storage, study_name="restart")
    study.enqueue_trial({"x": 1})
    postgres.stop()
    back = threading.Timer(2.0, postgres.start)
    back.start()
    try:
        start = time.monotonic()
        assert len(Store.load(storage, "restart").get_trials()) == 1  # asked while it was down
        assert time.monotonic() - start > 1.0  # it did wait for the server
    finally:
        back.join()


def _descendants(pid: int) -> set[int]:
    """Every process started under ``pid``, however deep (from /proc, at this moment)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


API = "import sys, cnnlab; cnnlab.ablate(sys.argv[1], out=sys.argv[2], workers=2)"
WAYS_IN = {  # what a user starts: the installed script, the module, the Python API
    "script": lambda spec, out: [str(Path(sys.executable).with_name("cnnlab")), "ablate",
                                 str(spec), "--out", str(out), "--workers", "2"],
    "module": lambda spec, out: [sys.executable, "-m", "cnnlab", "ablate", str(spec), "--out",
                                 str(out), "--workers", "2"],
    "api": lambda spec, out: [sys.executable, "-c", API, str(spec), str(out)],
}


@pytest.mark.slow
@pytest.mark.parametrize(("way", "sig"), [("script", signal.SIGKILL), ("script", signal.SIGHUP),
                                          ("module", signal.SIGKILL), ("api", signal.SIGKILL),
                                          ("api", signal.SIGTERM)])
def test_a_killed_command_takes_its_workers_along(tmp_path: Path, way: str,
                                                  sig: signal.Signals) -> None:
    """A real process per way in (not the tests' warm server), killed once both workers run
    trials: within seconds no process it started is left — fork server and workers were
    re-parented to init and completed 42 more trials after a ``kill -9`` — and its storage
    is never written again."""
    spec = write_spec(tmp_path, seeds=20, arms="norm only")
    spec.write_text(spec.read_text().replace("trainer.max_epochs=1", "trainer.max_epochs=40"))
    out = tmp_path / "out"
    stderr = tmp_path / "stderr"  # a file: a pipe would wait for every process holding it
    with stderr.open("w") as err:
        proc = subprocess.Popen(WAYS_IN[way](spec, out), env={**ENV, "WANDB_MODE": "offline"},
                                stdout=subprocess.DEVNULL, stderr=err)  # W&B as users have it
    deadline = time.monotonic() + 120
    while proc.poll() is None and len(_workers(out)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, stderr.read_text()
    started = _descendants(proc.pid)
    assert len(started) >= 3  # the fork server and two workers at least
    proc.send_signal(sig)
    proc.wait(timeout=60)
    caught = sig != signal.SIGKILL and way != "api"  # the API leaves signals to its caller
    assert proc.returncode == (128 + sig if caught else -sig), stderr.read_text()
    gone = time.monotonic() + 5
    while (left := {pid for pid in started if _alive(pid)}) and time.monotonic() < gone:
        time.sleep(0.1)
    assert not left, [Path(f"/proc/{pid}/cmdline").read_text()[:80] for pid in left]
    # a worker ends at once, without a traceback, and leaves its run's staging folder provably
    # cnnlab's (the rerun clears it): Lightning's own SIGTERM handler made workers unwind
    # through W&B's finish and the folder's removal, printing tracebacks, and a W&B service
    # still writing left the folder without its manifest: the rerun refused it
    assert "Traceback" not in stderr.read_text(), stderr.read_text()
    for staging in out.rglob("*.cnnlab-partial"):
        assert (Manifest.read(staging) or Manifest("none")).kind == "partial", staging
    journal = (out / "study.journal").read_bytes()
    finished = [t for t in trials(out) if t.state.is_finished()]
    time.sleep(2)
    assert (out / "study.journal").read_bytes() == journal
    assert len(finished) < 60  # it stopped mid-study


@pytest.mark.slow
def test_one_killed_worker_whose_trials_the_other_finished_is_no_failure(tmp_path: Path) -> None:
    """One of two workers SIGKILLed, the other took over its trial and finished every one: the
    command said "rerun to finish the missing trials" with exit 2. Now a note and exit 0."""
    spec = write_spec(tmp_path, seeds=4, arms="norm only")
    spec.write_text(spec.read_text().replace("trainer.max_epochs=1", "trainer.max_epochs=20"))
    out = tmp_path / "out"
    with (tmp_path / "stderr").open("w") as err:
        proc = subprocess.Popen(WAYS_IN["module"](spec, out), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=err)
    deadline = time.monotonic() + 120
    while len(workers := _workers(out)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(min(workers), signal.SIGKILL)
    assert proc.wait(timeout=300) == 0, (tmp_path / "stderr").read_text()
    assert "1 of 2 workers ended early (killed by SIGKILL); the others finished their work" in (
        tmp_path / "stderr").read_text()
    assert sorted(complete_keys(out)) == sorted(
        f"model.norm={n} | seed={s}" for n in ("batch", "layer", "none") for s in range(4))


@pytest.mark.slow
def test_a_users_file_where_a_trial_writes_stops_the_study_in_one_line(cli, tmp_path: Path,
                                                                      monkeypatch) -> None:
    """It failed that trial on every rerun with exit 0 (the report silently had fewer seeds)."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    spec, out = write_spec(tmp_path, seeds=1, arms="norm only"), tmp_path / "out"
    assert cli("ablate", spec, "--out", out)[0] == 0
    mine = out / "trials" / "model.norm=layer" / "seed1" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("mine")
    status, _, err = cli("ablate", spec, "--out", out, "--seeds", "2", "--workers", "1")
    assert status == 2 and err.strip().splitlines()[-1].startswith(
        f"cnnlab: error: --out {mine.parent}: holds files cnnlab did not write (notes.txt)"), err
    assert mine.read_text() == "mine"
    mine.unlink()
    status, _, err = cli("ablate", spec, "--out", out, "--seeds", "2", "--workers", "1")
    assert status == 0, err
    assert len(complete_keys(out)) == 6
