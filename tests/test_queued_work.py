"""Queued work is run exactly once, and a command never ends with status 0 on a study it left
incomplete: two commands racing for the same work, a trial that failed, a folder two storages
would share, and the README's two-shell PostgreSQL example as written."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import psycopg
import pytest
from optuna.trial import TrialState
from test_ablation import write_spec
from test_nothing_lost import hashes

import cnnlab.studies.ablations.run as ablation_run
from cnnlab.outputs.ownership import MANIFEST
from cnnlab.studies.ablations.store import AblationStore
from cnnlab.studies.engine.storage import open_storage
from cnnlab.studies.engine.store import KEY, NO_ATTEMPT, Store
from cnnlab.tracking.runs import stable_id

ROOT = Path(__file__).resolve().parent.parent


def test_two_copies_of_one_queued_work_popped_at_once_run_exactly_once(tmp_path: Path) -> None:
    """Two commands that queue the same work at once queue it twice; two workers popping the
    copies at once each saw the other running and both deferred: the work was lost."""
    study = optuna.create_study(storage=open_storage(str(tmp_path / "s.journal")))
    store = Store(study)
    for _ in range(2):
        store.enqueue("arm | seed=5")
    first, second = study.ask(), study.ask()  # both RUNNING before either checks
    assert not store.taken_elsewhere(first, "arm | seed=5")  # the lower number goes on
    assert store.taken_elsewhere(second, "arm | seed=5")
    store.ran_nothing(second, "duplicate")
    study.tell(second, state=TrialState.FAIL)
    assert store.incomplete() == {"arm | seed=5": "running"}
    study.tell(first, 1.0)
    assert store.incomplete() == {}
    store.enqueue("arm | seed=6")
    store.enqueue("arm | seed=6")
    early = study.ask()  # its copy still waits, queued after it: this one runs the work
    assert not store.taken_elsewhere(early, "arm | seed=6")
    assert store.taken_elsewhere(study.ask(), "arm | seed=6")


def test_work_whose_every_attempt_deferred_is_named_as_not_run(tmp_path: Path) -> None:
    study = optuna.create_study(storage=open_storage(str(tmp_path / "s.journal")))
    store = Store(study)
    store.enqueue("arm | seed=5")
    trial = study.ask()
    store.ran_nothing(trial, "duplicate")
    study.tell(trial, state=TrialState.FAIL)
    assert store.incomplete() == {"arm | seed=5": NO_ATTEMPT}


@pytest.mark.slow
def test_a_trial_that_failed_makes_the_command_fail_and_a_rerun_runs_it(
        cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, spec = tmp_path / "out", write_spec(tmp_path, seeds=2, arms="norm only")  # 6 trials
    real = ablation_run.run

    def flaky(cfg, run_dir, **kwargs):
        if run_dir.parts[-2:] == ("model.norm=layer", "seed1"):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(cfg, run_dir, **kwargs)

    monkeypatch.setattr(ablation_run, "run", flaky)
    status, _, err = cli("ablate", spec, "--out", out, "--workers", "1")
    assert status == 1, err
    (line,) = [x for x in err.splitlines() if "did not finish" in x]
    assert ("tiny: 1 of 6 trials did not finish (model.norm=layer | seed=1: CUDA error: an "
            "illegal memory access was encountered); the report leaves them out: rerun the same "
            "command to run them") in line
    report = (out / "report.md").read_text()
    assert "## Trials that did not run" in report and "- model.norm=layer | seed=1: CUDA" in report
    monkeypatch.setattr(ablation_run, "run", real)
    status, stdout, err = cli("ablate", spec, "--out", out, "--workers", "1")
    assert status == 0, err
    assert "resuming: 5 of 6 trials done" in stdout and "did not finish" not in err
    assert "Trials that did not run" not in (out / "report.md").read_text()


@pytest.mark.slow
def test_a_study_folder_reports_one_storage(cli, tmp_path: Path) -> None:
    """A second storage's study into the same --out replaced the first one's trial folders
    and shared its W&B summary run; now it is refused, before anything is written."""
    out, spec = tmp_path / "norm-quick", write_spec(tmp_path, seeds=1, arms="norm only")
    status, _, err = cli("ablate", spec, "--out", out, "--workers", "1")
    assert status == 0, err
    journal_id = stable_id("cnnlab", "tiny", out)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    shared = tmp_path / "shared"
    assert cli("ablate", spec, "--out", shared, "--storage", other, "--workers", "1")[0] == 0
    assert stable_id("cnnlab", "tiny", shared) != journal_id  # one summary run per storage
    assert json.loads((shared / MANIFEST).read_text())["storage"] == other
    before = hashes(tmp_path)
    for command in (["ablate", spec, "--out", out, "--storage", other],
                    ["report", "tiny", "--out", out, "--storage", other]):
        status, _, err = cli(*command)
        assert status == 2 and "reports the study of another storage" in err, err
        assert "allowed: another --out for this storage (" in err
        assert hashes(tmp_path) == before
    # without --storage, report reads the storage the folder records, not a journal it lacks
    status, _, err = cli("report", "tiny", "--out", shared)
    assert status == 0 and not (shared / "study.journal").exists(), err
    status, table, err = cli("report", "--summary", "tiny", "--out", shared)
    assert status == 0 and table.splitlines()[-1].startswith("| `tiny` |"), err
    held = json.loads((shared / MANIFEST).read_text())
    (shared / MANIFEST).write_text(json.dumps({**held, "storage": "postgresql://u:***@db/x"}))
    status, _, err = cli("report", "tiny", "--out", shared)
    assert status == 2 and "recorded without its password; allowed: --storage" in err, err
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["storage"]  # a folder of cnnlab <= 0.6: its journal names its storage
    (out / MANIFEST).write_text(json.dumps(manifest))
    status, _, err = cli("ablate", spec, "--out", out, "--storage", other)
    assert status == 2 and f"another storage ({out / 'study.journal'})" in err


def _readme_two_shells() -> tuple[str, str]:
    """The README's multi-machine commands: the ablation every machine runs, and the report."""
    text = (ROOT / "README.md").read_text()
    ablate, report = (re.search(rf"^(\.venv/bin/cnnlab {verb} .*--storage postgresql://\S+.*)$",
                                text, re.M) for verb in ("ablate", "report"))
    assert ablate and report, "the README lost its multi-machine example"
    return ablate[1], report[1]


@pytest.mark.slow
def test_the_readmes_two_shell_postgresql_example_loses_no_trial(tmp_path: Path,
                                                                 postgres_url: str) -> None:
    """Two shells on one machine run the README's command as written (its URL pointed at the
    test cluster, a fresh database): both finish, every arm × seed exactly once."""
    database = f"shells_{os.getpid()}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {database}")
    url = f"{postgres_url.rsplit('/', 1)[0]}/{database}"
    ablate, report = (re.sub(r"postgresql://\S+", url, c) for c in _readme_two_shells())
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "cnnlab").symlink_to(Path(sys.executable).parent / "cnnlab")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    shells = [subprocess.Popen(ablate, shell=True, cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    ends = [shell.communicate(timeout=400) for shell in shells]
    for shell, (_, err) in zip(shells, ends, strict=True):
        assert shell.returncode == 0, err
    store = AblationStore(Store.load(open_storage(url, readonly=True), "norm-quick"))
    trials = store.trials()
    done = [t.user_attrs[KEY] for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == len(set(done)) == sum(store.planned(store.spec).values())  # each once
    assert not store.incomplete()
    assert len({t.user_attrs["worker"] for t in trials if t.state == TrialState.COMPLETE}) >= 3
    # the report as written, then without --storage: the folder records its database
    for command in (report, re.sub(r" --storage \S+", "", report)):
        shown = subprocess.run(command, shell=True, cwd=tmp_path, env=env, text=True,
                               capture_output=True, timeout=120)
        assert shown.returncode == 0, (command, shown.stderr)
        written = (tmp_path / "reports/norm-shared/report.md").read_text()
        assert "Trials that did not run" not in written and "## Hypothesis (confirmatory)" in written
