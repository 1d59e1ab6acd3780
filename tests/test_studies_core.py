"""Studies core: heartbeats across machines, one trial loop, and a house without import circles."""

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import optuna
import pytest
import warm
from optuna.trial import TrialState
from test_ablation import write_spec
from test_search import write_spec as write_search_spec

from cnnlab.config import CHOICES
from cnnlab.data.augment import POLICIES
from cnnlab.data.sources import SOURCES
from cnnlab.errors import CnnlabError
from cnnlab.models.convnet import INITS, POOLS
from cnnlab.models.norms import NORMS
from cnnlab.outputs.files import abort_run, begin_run, staging_path
from cnnlab.outputs.ownership import Manifest
from cnnlab.regularization import REGULARIZERS
from cnnlab.studies.engine.storage import open_storage
from cnnlab.studies.engine.store import HEARTBEAT, KEY, NOTE, WORKER, Store
from cnnlab.studies.engine.trials import liveness, reclaim
from cnnlab.studies.specs import safe_name
from cnnlab.training.fast import PRECISIONS
from cnnlab.training.optim import OPTIMIZERS, SCHEDULERS

ROOT = Path(__file__).resolve().parent.parent
INTERVAL, GRACE = 0.5, 4.0
ENV = {**os.environ, "WANDB_MODE": "disabled", "CNNLAB_HEARTBEAT_S": str(INTERVAL),
       "CNNLAB_GRACE_S": str(GRACE)}


def _url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return (str(tmp_path / "shared.journal") if kind == "journal"
            else request.getfixturevalue("postgres_url"))


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return Store.load(open_storage(url, readonly=True), name).get_trials()
    except (CnnlabError, FileNotFoundError):  # nothing stored yet
        return []


def _kill_mid_trial(args: list[str], url: str, name: str) -> float:
    """Run ``cnnlab ARGS`` as a worker of other-host, SIGKILL it while a trial of its trains
    (heartbeat sent, parameters drawn); returns the time of the kill."""
    proc = warm.Command([sys.executable, "-m", "cnnlab.cli", *args], ENV, hostname="other-host")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(t.state == TrialState.RUNNING and HEARTBEAT in t.user_attrs and t.params
               for t in _trials(url, name)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate(60)[1]
    proc.send_signal(signal.SIGKILL)
    proc.communicate(60)
    return time.time()


def _lost(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    lost = [t for t in trials if t.state == TrialState.FAIL]
    assert len(lost) == 1 and lost[0].user_attrs[WORKER].startswith("other-host:")
    return lost


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_a_dead_machines_ablation_trial_is_redone_after_the_grace_period(
        tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    url, name = _url(kind, tmp_path, request), f"dead-{tmp_path.name}"
    spec = write_spec(tmp_path, seeds=2, arms="norm only")  # 3 arms × 2 seeds
    spec.write_text(spec.read_text().replace("name: tiny", f"name: {name}"))
    args = ["ablate", str(spec), "--out", str(tmp_path / "out"), "--storage", url]
    killed = _kill_mid_trial(args, url, name)
    done = warm.run([sys.executable, "-m", "cnnlab.cli", *args], ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    trials = _trials(url, name)
    keys = [t.user_attrs[KEY] for t in trials if t.state == TrialState.COMPLETE]
    assert len(keys) == 6 and len(set(keys)) == 6  # every arm × seed exactly once
    (lost,) = _lost(trials)
    assert lost.user_attrs[KEY] in keys  # its work was queued again and finished here
    (redo,) = [t for t in trials if t.state == TrialState.COMPLETE
               and t.user_attrs[KEY] == lost.user_attrs[KEY]]
    assert redo.user_attrs[WORKER].startswith(socket.gethostname() + ":")
    assert list(redo.intermediate_values) == [0]  # validation accuracy per epoch (1 epoch)
    assert "history" not in redo.user_attrs and "seed" not in redo.params
    # not before the grace period: its last heartbeat came at most one interval before the kill
    assert lost.datetime_complete.timestamp() - killed >= GRACE - INTERVAL - 0.1
    assert not [t for t in trials if NOTE in t.user_attrs]
    assert not list((tmp_path / "out").rglob("*.cnnlab-partial"))  # the lost attempt's folder
    assert "## Incomplete" not in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_a_dead_machines_search_trial_is_redone_and_the_count_is_exact(
        tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    url, name = _url(kind, tmp_path, request), f"dead-{tmp_path.name}"
    args = ["tune", str(write_search_spec(tmp_path)), "--out", str(tmp_path / "out"),
            "--storage", url, "--study", name, "--trials", "4"]
    killed = _kill_mid_trial(args, url, name)
    done = warm.run([sys.executable, "-m", "cnnlab.cli", *args], ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    trials = _trials(url, name)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4  # exactly --trials, the lost one not counted
    (lost,) = _lost(trials)  # and no placeholder trials
    assert any(t.params == lost.params for t in finished)  # its configuration was redone
    assert lost.datetime_complete.timestamp() - killed >= GRACE - INTERVAL - 0.1
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_a_live_workers_trial_is_never_taken_on_any_host(
        tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    study = optuna.create_study(storage=open_storage(_url(kind, tmp_path, request)),
                                study_name=f"live-{tmp_path.name}")
    requeued: list[int] = []
    live_here = f"{socket.gethostname()}:{os.getppid()}"  # a live process of this host
    for number, worker in enumerate(("other-host:1", live_here)):
        study.enqueue_trial({"x": float(number)}, user_attrs={KEY: f"slot {number}"})
        trial = study.ask()
        trial.suggest_float("x", 0, 10)
        trial.set_user_attr(WORKER, worker)
        trial.set_user_attr(HEARTBEAT, time.time())
    store = Store(study)
    assert reclaim(store, lambda t: requeued.append(t.number)) == 0  # fresh heartbeats
    for t in study.get_trials(states=(TrialState.RUNNING,)):  # both stop beating
        study._storage.set_trial_user_attr(t._trial_id, HEARTBEAT, time.time() - GRACE - 1)
    os.environ.update(CNNLAB_HEARTBEAT_S=str(INTERVAL), CNNLAB_GRACE_S=str(GRACE))
    try:
        assert reclaim(store, store.requeue) == 2  # silent past the grace: lost
        assert reclaim(store, store.requeue) == 0  # failed once, queued once
    finally:
        del os.environ["CNNLAB_HEARTBEAT_S"], os.environ["CNNLAB_GRACE_S"]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.user_attrs[KEY] for t in waiting) == ["slot 0", "slot 1"]
    assert not requeued


def test_liveness_settings_are_checked(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    assert liveness() == (10.0, 60.0)
    monkeypatch.setenv("CNNLAB_GRACE_S", "abc")
    with pytest.raises(CnnlabError, match="CNNLAB_GRACE_S: got 'abc'; allowed"):
        liveness()
    monkeypatch.setenv("CNNLAB_GRACE_S", "5")
    with pytest.raises(CnnlabError, match="at least twice CNNLAB_HEARTBEAT_S"):
        liveness()
    spec = write_spec(tmp_path, seeds=1)
    for command in (["ablate", spec], ["tune", write_search_spec(tmp_path)]):
        before = sorted(tmp_path.rglob("*"))
        status, _, err = cli(*command, "--out", tmp_path / "out")
        assert status == 2 and "CNNLAB_GRACE_S: got 5" in err
        assert sorted(tmp_path.rglob("*")) == before  # nothing written
    monkeypatch.setenv("CNNLAB_GRACE_S", "0.02")  # would take live trials from their workers
    with pytest.raises(CnnlabError, match=r"CNNLAB_GRACE_S: got '0.02'; allowed: seconds, a number in \[4, "):
        liveness()
    monkeypatch.setenv("CNNLAB_GRACE_S", "60")
    for tiny in ("0.01", "1e-300"):  # 1e-300 flooded the journal with heartbeats
        monkeypatch.setenv("CNNLAB_HEARTBEAT_S", tiny)
        with pytest.raises(CnnlabError,
                           match=r"CNNLAB_HEARTBEAT_S: got .*; allowed: seconds, a number in \[0.5, "):
            liveness()


def test_takeover_clears_a_lost_attempt_but_never_a_folder_cnnlab_did_not_make(
        tmp_path: Path) -> None:
    out = tmp_path / "trials" / "arm" / "seed0"
    staging = staging_path(out)
    staging.mkdir(parents=True)
    Manifest("partial", "other-host:1").write(staging)  # another machine's attempt, judged lost
    (staging / "half.ckpt").write_bytes(b"half")
    with pytest.raises(CnnlabError, match="another cnnlab process"):
        begin_run(out, overwrite=True)  # without takeover, another host counts as alive
    assert begin_run(out, overwrite=True, takeover=True) == staging
    assert not (staging / "half.ckpt").exists()
    abort_run(staging)
    staging.mkdir()
    (staging / "mine.txt").write_text("mine")  # the same name, but the user's folder
    with pytest.raises(CnnlabError, match="cnnlab did not make it"):
        begin_run(out, overwrite=True, takeover=True)
    assert (staging / "mine.txt").read_text() == "mine"


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter (what it imports is what a command would load)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_config_and_a_config_error_load_no_torch() -> None:
    done = _python("import sys; from cnnlab.cli import main; import cnnlab.config; "
                   "status = main(['fit', 'model.norm=batchy']); "
                   "print(status, *(m in sys.modules for m in ('torch', 'lightning', 'optuna')))")
    assert done.stdout.split() == ["2", "False", "False", "False"], done.stderr
    assert "model.norm: unknown value 'batchy'; allowed: batch, layer" in done.stderr


def test_help_loads_no_torch_lightning_or_optuna() -> None:
    done = _python("import sys; from cnnlab.cli import main\n"
                   "try:\n    main(['--help'])\nexcept SystemExit as e:\n    code = e.code\n"
                   "print(code, *(m in sys.modules for m in ('torch', 'lightning', 'optuna')))")
    assert done.stdout.split()[-4:] == ["0", "False", "False", "False"], done.stderr
    assert "cross-validated Optuna search" in done.stdout


@pytest.mark.slow
def test_the_statistics_and_the_report_load_no_torch_lightning_or_wandb() -> None:
    done = _python("import sys; import cnnlab.studies.ablations.report, cnnlab.studies.ablations.results, "
                   "cnnlab.studies.ablations.planning, cnnlab.studies.ablations.dashboard; "
                   "print(*(m in sys.modules for m in ('torch', 'lightning', 'wandb')))")
    assert done.stdout.split() == ["False", "False", "False"], done.stderr


def test_registries_implement_exactly_the_config_choices() -> None:
    tables = {"data.name": SOURCES, "data.augment.policy": POLICIES, "model.pool": POOLS,
              "model.norm": NORMS, "model.init": INITS, "optim.name": OPTIMIZERS,
              "optim.scheduler": SCHEDULERS, "reg.kind": REGULARIZERS,
              "trainer.precision": PRECISIONS}
    for key, table in tables.items():
        assert tuple(table) == CHOICES[key], key


def test_the_trial_loop_records_failures_under_one_name(cli, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, seeds=1, arms="norm only")
    spec.write_text(spec.read_text().replace("[batch, layer, none]", "[batch, none]")
                    .replace("data.batch_size=128", "data.batch_size=128, optim.lr=1.0e+6"))
    status, _, err = cli("ablate", spec, "--out", tmp_path / "out")
    assert status == 0, err
    trials = _trials(str(tmp_path / "out" / "study.journal"), "tiny")
    assert trials and all(t.state == TrialState.COMPLETE for t in trials)  # failed: an outcome
    assert all(t.user_attrs["failure"] == "diverged" for t in trials)
    assert all("error" not in t.user_attrs and "reason" not in t.user_attrs for t in trials)
    assert all(set(t.params) == {"model.norm"} for t in trials)  # the factor, not the seed
    assert sorted(t.user_attrs["seed"] for t in trials) == [0, 0]


OLD = Path(__file__).resolve().parent / "data" / "v0.1"  # written by cnnlab 0.1 (commit e9137fb)


def test_an_ablation_of_cnnlab_0_1_still_reports_and_resumes(cli, tmp_path: Path) -> None:
    journal = tmp_path / "old.journal"
    shutil.copy(OLD / "ablation.journal", journal)
    status, _, err = cli("report", "tiny", "--storage", journal, "--out", tmp_path / "report")
    assert status == 0, err
    old = list(csv.DictReader((OLD / "results.csv").open()))
    now = list(csv.DictReader((tmp_path / "report" / "results.csv").open()))
    assert [{k: r[k] for k in old[0]} for r in now] == old  # 0.2 added columns, kept the values
    assert all(r["diverged"] == "False" and r["weight_l2"] == "" for r in now)  # not measured then
    assert all(r["failure"] == "" for r in now)
    assert (tmp_path / "report" / "curves.png").is_file()  # from the old per-epoch history
    status, _, err = cli("ablate", OLD / "tiny.yaml", "--seeds", "3", "--storage", journal,
                         "--out", tmp_path / "more")
    assert status == 0, err
    done = [t for t in _trials(str(journal), "tiny") if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs[KEY] for t in done) == sorted(
        f"model.norm={norm} | seed={seed}" for norm in ("batch", "none") for seed in range(3))
    rows = list(csv.DictReader((tmp_path / "more" / "results.csv").open()))
    assert len(rows) == 6 and [{k: r[k] for k in old[0]} for r in rows if r["seed"] != "2"] == old
    assert all(r["weight_l2"] for r in rows if r["seed"] == "2")  # the new trials measure it


def test_a_search_of_cnnlab_0_1_resumes_to_the_exact_count(cli, tmp_path: Path) -> None:
    journal = tmp_path / "old.journal"
    shutil.copy(OLD / "search.journal", journal)
    before = _trials(str(journal), "small")
    assert [t for t in before if "beyond" in t.user_attrs.get(NOTE, "")]  # its placeholder
    status, _, err = cli("tune", OLD / "small.yaml", "--storage", journal, "--out",
                         tmp_path / "out", "--trials", "4")
    assert status == 0, err
    after = _trials(str(journal), "small")
    finished = [t for t in after if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4 and len(after) == len(before) + 1  # one new trial, no placeholder
    rows = list(csv.DictReader((tmp_path / "out" / "trials.csv").open()))
    assert len(rows) == 4 and all(r["state"] == "COMPLETE" for r in rows)


@pytest.mark.slow
def test_a_timed_out_search_leaves_its_slots_for_the_rerun(cli, tmp_path: Path) -> None:
    spec, out = write_search_spec(tmp_path, pruner="{name: none}"), tmp_path / "out"
    spec.write_text(spec.read_text().replace("batch_size=128", "batch_size=16"))  # ~1 s a trial

    def counts() -> tuple[int, int, int]:
        trials = _trials(str(out / "study.journal"), "small")
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        return finished, sum(t.state == TrialState.WAITING for t in trials), len(trials)

    for _ in range(2):  # each run starts no trial after 3 s: 30 trials take far longer
        before = counts()[0] if (out / "study.journal").exists() else 0
        status, _, err = cli("tune", spec, "--out", out, "--trials", "30", "--timeout", "3")
        assert status == 0, err
        finished, waiting, total = counts()
        assert before < finished < 30 and finished + waiting == 30
        assert total == 30  # the rerun ran the queued slots and queued nothing more


def test_names_on_disk_are_bounded_and_never_merged() -> None:
    assert safe_name("norm-quick") == "norm-quick"  # existing studies keep their folders
    assert safe_name("model.norm=batch, reg=none") == "model.norm=batch_reg=none"
    long = [safe_name("x" * 300), safe_name("x" * 299)]
    assert all(len(n) <= 80 for n in long) and long[0] != long[1]
    greek = {safe_name(n) for n in ("δοκιμή", "πείραμα", "σύγκριση")}
    assert len(greek) == 3 and all(n.startswith("_-") for n in greek)


def test_a_300_character_level_name_runs_and_reports(cli, tmp_path: Path) -> None:
    """A level name longer than a file name may be used to leave its trial RUNNING for good."""
    level = "l2_" + "x" * 300
    spec = tmp_path / "long.yaml"
    spec.write_text(f"name: long\noverrides: [trainer.max_epochs=1, 'model.channels=[8]']\n"
                    f"factors:\n  reg:\n    none: {{}}\n    {level}: {{reg.kind: l2}}\nseeds: 1\n")
    status, _, err = cli("ablate", spec, "--out", tmp_path / "out", "--workers", "1")
    assert status == 0, err
    assert f"reg={level}" in (tmp_path / "out" / "report.md").read_text()


def test_version_and_python_dash_m() -> None:
    """``cnnlab --version`` names the installed version (the one pyproject.toml declares), and
    ``python -m cnnlab`` is the same command."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for command in (["-m", "cnnlab", "--version"], ["-m", "cnnlab.cli", "--version"]):
        done = subprocess.run([sys.executable, *command], capture_output=True, text=True,
                              timeout=60, cwd=ROOT)
        assert done.returncode == 0 and done.stdout.strip() == f"cnnlab {declared}", done.stderr


def test_report_of_a_name_make_ablation_wrote_with_quick_says_so(cli, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    """After ``make ablation`` the study is ``norm-quick``: ``cnnlab report norm`` said only
    "no study storage there". A typo of a study's name gets the near one."""
    monkeypatch.chdir(tmp_path)
    for name in ("norm-quick", "dropout"):
        (tmp_path / "reports" / name).mkdir(parents=True)
        (tmp_path / "reports" / name / "study.journal").write_text("")
    status, _, err = cli("report", "norm")
    assert status == 2 and "no study storage there (did you mean norm-quick?)" in err
    status, _, err = cli("report", "dropuot")
    assert status == 2 and "(did you mean dropout?)" in err
