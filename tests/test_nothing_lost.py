"""Nothing of the user's is lost: run and study folders, overwrites, torn journals, full disks.

Each test hashes every file around the command: what cnnlab did not write stays byte-identical.
"""

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import warm
from optuna.trial import TrialState
from PIL import Image
from test_ablation import write_spec

from cnnlab.errors import CnnlabError
from cnnlab.outputs import files, ownership
from cnnlab.outputs.files import claim_study_folder, staging_path, write_owned
from cnnlab.outputs.ownership import MANIFEST, Manifest
from cnnlab.studies.engine.storage import open_storage
from cnnlab.studies.engine.store import Store
from cnnlab.training import run as run_module

FAST = ["trainer.max_epochs=1", "model.channels=[8]", "model.hidden_units=[16]", "data.batch_size=128"]
ENV = {**os.environ, "WANDB_MODE": "disabled"}


def hashes(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) with its SHA-256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def fit(cli, out: Path, *args: str) -> tuple[int, str, str]:
    return cli("fit", "--out", out, *FAST, *args)


@pytest.fixture
def finished_run(cli, tmp_path: Path) -> Path:
    out = tmp_path / "runs" / "fit"
    status, _, err = fit(cli, out)
    assert status == 0, err
    return out


def test_a_run_lists_every_file_it_wrote(finished_run: Path) -> None:
    manifest = Manifest.read(finished_run)
    assert manifest is not None and manifest.kind == "run"
    on_disk = set(hashes(finished_run)) - {MANIFEST}
    assert set(manifest.files) == on_disk and {"metrics.json", "config.yaml"} <= on_disk
    assert not staging_path(finished_run).exists()
    mode, umask = (finished_run / "metrics.json").stat().st_mode & 0o777, os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask, oct(mode)  # the user's umask, not mkstemp's 0600


def test_overwrite_keeps_a_users_file_and_the_old_run(cli, finished_run: Path) -> None:
    (finished_run / "notes.txt").write_text("my notes")
    (finished_run / "checkpoints" / "mine.ckpt").write_bytes(b"precious")
    before = hashes(finished_run.parent)
    status, _, err = fit(cli, finished_run, "--overwrite")
    assert status == 2 and "--overwrite would lose files cnnlab did not write" in err
    assert "checkpoints/mine.ckpt" in err and "notes.txt" in err
    assert hashes(finished_run.parent) == before


def test_overwrite_keeps_a_file_the_user_changed(cli, finished_run: Path) -> None:
    (finished_run / "metrics.json").write_text('{"mine": true}\n')
    before = hashes(finished_run.parent)
    status, _, err = fit(cli, finished_run, "--overwrite")
    assert status == 2 and "(metrics.json)" in err
    assert hashes(finished_run.parent) == before


@pytest.mark.parametrize("bad", [
    ["data.name=npz", "data.root=/nowhere/d.npz"],  # fails while loading the data, after the checks
    ["model.kernel_size=11", "model.pool=none"],  # fails building the model
    ["optim.lr=0"],  # fails validating the config
])
def test_a_failed_overwrite_leaves_the_old_run_as_it_was(cli, finished_run: Path, bad: list[str]) -> None:
    before = hashes(finished_run.parent)
    status, _, err = fit(cli, finished_run, "--overwrite", *bad)
    assert status == 2 and "Traceback" not in err
    assert hashes(finished_run.parent) == before  # old run intact, no staging folder left


def test_overwrite_replaces_the_run_and_nothing_beside_it(cli, finished_run: Path) -> None:
    beside = finished_run.parent / "keep.txt"
    beside.write_text("beside the run")
    old = json.loads((finished_run / "metrics.json").read_text())
    status, _, err = fit(cli, finished_run, "--overwrite", "seed=7")
    assert status == 0, err
    assert beside.read_text() == "beside the run"
    assert sorted(p.name for p in finished_run.parent.iterdir()) == ["fit", "keep.txt"]
    assert "seed: 7" in (finished_run / "config.yaml").read_text()
    assert json.loads((finished_run / "metrics.json").read_text()) != old
    manifest = Manifest.read(finished_run)
    assert manifest is not None and set(manifest.files) == set(hashes(finished_run)) - {MANIFEST}


def test_a_crashed_swaps_old_run_is_cleared_but_not_a_users_file_in_it(cli, finished_run: Path) -> None:
    aside = finished_run.parent / f".{finished_run.name}.cnnlab-old"
    aside.mkdir()
    (aside / "metrics.json").write_text("{}")
    Manifest("run", files={"metrics.json": hashlib.sha256(b"{}").hexdigest()}).write(aside)
    (aside / "mine.txt").write_text("mine")  # the user's, inside the leftover
    status, _, err = fit(cli, finished_run, "--overwrite")
    assert status == 2 and "holds files cnnlab did not write" in err
    assert (aside / "mine.txt").read_text() == "mine" and not (aside / "metrics.json").exists()
    assert (finished_run / "metrics.json").is_file()  # the finished run is still in place
    (aside / "mine.txt").unlink()
    status, _, err = fit(cli, finished_run, "--overwrite")
    assert status == 0, err
    assert not aside.exists()


def test_a_killed_fits_staging_folder_is_cleared_and_a_live_ones_is_not(cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    staging = staging_path(out)
    staging.mkdir()
    Manifest("partial", f"{socket.gethostname()}:{2**22 + 12345}").write(staging)  # no such pid
    (staging / "half.ckpt").write_bytes(b"half")
    status, _, err = fit(cli, out)
    assert status == 0, err
    assert not staging.exists() and (out / "metrics.json").is_file()

    other = tmp_path / "other"
    live = staging_path(other)
    live.mkdir()
    Manifest("partial", f"{socket.gethostname()}:{os.getppid()}").write(live)  # alive: our parent
    before = hashes(tmp_path)
    status, _, err = fit(cli, other)
    assert status == 2 and "another cnnlab process" in err
    assert hashes(tmp_path) == before


def test_a_staging_folder_written_while_it_is_cleared_stays_cnnlabs_for_the_rerun(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker stopped mid-run cleared its staging folder while its W&B service still wrote
    logs into it: the manifest went, the logs stayed, and every rerun refused the folder as
    not cnnlab's. Now the folder keeps its manifest, and the rerun clears it; the user's files
    beside it and outside are untouched."""
    out = tmp_path / "runs" / "fit"
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "notes.txt").write_text("mine")
    (tmp_path / "outside.txt").write_text("mine too")
    staging = files.begin_run(out, overwrite=False)
    (staging / "wandb").mkdir()
    (staging / "wandb" / "run.wandb").write_bytes(b"records")
    real = files.remove_owned

    def late_writer(folder: Path, manifest: Manifest) -> list[str]:  # after the listing
        (folder / "wandb" / "debug-internal.log").write_text("a W&B service's last lines")
        return real(folder, manifest)

    monkeypatch.setattr(files, "remove_owned", late_writer)
    mine = {k: v for k, v in hashes(tmp_path).items() if ".cnnlab-partial" not in k}
    with pytest.raises(CnnlabError, match="could not be cleared .*allowed: rerun"):
        files.abort_run(staging)
    assert (Manifest.read(staging) or Manifest("none")).kind == "partial"
    monkeypatch.setattr(files, "remove_owned", real)
    again = files.begin_run(out, overwrite=False, takeover=True)
    assert again == staging and sorted(p.name for p in staging.iterdir()) == [MANIFEST]
    assert {k: v for k, v in hashes(tmp_path).items() if ".cnnlab-partial" not in k} == mine


def test_a_staging_name_held_by_a_user_folder_is_left_alone(cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    staging_path(out).mkdir()
    (staging_path(out) / "mine.txt").write_text("mine")
    before = hashes(tmp_path)
    status, _, err = fit(cli, out)
    assert status == 2 and "exists and cnnlab did not make it" in err
    assert hashes(tmp_path) == before


def _ablate(cli, spec: Path, out: Path, *args: str) -> tuple[int, str, str]:
    return cli("ablate", spec, "--out", out, *args)


@pytest.mark.slow
def test_a_report_the_user_edited_is_not_overwritten(cli, tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path, seeds=1), tmp_path / "study"
    assert _ablate(cli, spec, out)[0] == 0
    (out / "report.md").write_text("# my edited report\n")
    (out / "trials" / "notes.txt").write_text("mine")
    before = hashes(tmp_path)
    status, _, err = _ablate(cli, spec, out)
    assert status == 2 and f"--out {out}: report.md changed since cnnlab wrote it" in err
    assert hashes(tmp_path) == before  # refused before the storage was opened


def _keys(out: Path, name: str = "tiny") -> list[str]:
    study = Store.load(open_storage(str(out / "study.journal"), readonly=True), name)
    return [t.user_attrs["key"] for t in study.get_trials(states=(TrialState.COMPLETE,))]


@pytest.mark.slow
def test_torn_last_records_are_dropped_and_the_study_finishes(cli, tmp_path: Path) -> None:
    """A kill or a full disk during an append tears the last record: at 20 offsets inside it, the
    rerun keeps every complete record, says what it dropped and finishes every trial once."""
    spec, done = write_spec(tmp_path, seeds=1), tmp_path / "done"
    assert _ablate(cli, spec, done)[0] == 0
    journal = (done / "study.journal").read_bytes()
    last = journal.rstrip(b"\n").rfind(b"\n") + 1  # where the last record starts
    offsets = sorted(random.Random(0).sample(range(last + 1, len(journal) - 1), 20))
    for offset in offsets:
        out = tmp_path / f"torn{offset}"
        shutil.copytree(done, out)
        (out / "study.journal").write_bytes(journal[:offset])
        manifest = Manifest.read(out)
        assert manifest is not None
        status, _, err = _ablate(cli, spec, out)
        assert status == 0, err
        assert f"dropped a torn record ({offset - last} bytes)" in err
        keys = _keys(out)
        assert len(keys) == 4 and len(set(keys)) == 4, offset  # 2 norms × 2 regs × 1 seed, each once
        assert (out / "study.journal").read_bytes().endswith(b"\n")


@pytest.mark.slow
def test_a_journal_an_older_cnnlab_appended_to_after_a_torn_record_is_rescued(cli, tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path, seeds=1), tmp_path / "study"
    assert _ablate(cli, spec, out)[0] == 0
    path = out / "study.journal"
    lines = path.read_bytes().splitlines(keepends=True)
    torn = lines[-2][: len(lines[-2]) // 2]  # an old version appended the last record to a torn one
    path.write_bytes(b"".join(lines[:-2]) + torn + lines[-1])
    before = _keys(out)  # reading only: the damaged line is skipped, nothing is written
    assert path.read_bytes().count(b"\n") == len(lines) - 1
    status, _, err = cli("report", "tiny", "--out", out)
    assert status == 0 and "not repaired: reading only" in err
    status, _, err = _ablate(cli, spec, out)
    assert status == 0 and "rescued 1 record(s)" in err
    assert sorted(_keys(out)) == sorted(set(_keys(out))) and len(_keys(out)) == 4 >= len(before)


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


needs_mount = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None,
                                 reason="mounting a small tmpfs needs root")


@pytest.mark.slow
@needs_mount
def test_a_full_disk_is_one_line_and_a_rerun_with_space_finishes(tmp_path: Path) -> None:
    spec, disk = write_spec(tmp_path, seeds=3, arms="norm only"), tmp_path / "disk"
    if not _mount_tmpfs(disk, "300k"):
        pytest.skip("this machine refuses mount (no CAP_SYS_ADMIN)")
    try:
        command = [sys.executable, "-m", "cnnlab.cli", "ablate", str(spec), "--out", str(disk / "out")]
        full = warm.run(command, ENV, timeout=300)
        assert full.returncode == 2, full.stderr
        errors = [line for line in full.stderr.splitlines() if line.startswith("cnnlab: error:")]
        assert len(errors) == 1 and "No space left on device" in errors[0]
        assert "Traceback" not in full.stderr
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        rerun = warm.run(command, ENV, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        keys = _keys(disk / "out")
        assert len(keys) == 9 and len(set(keys)) == 9  # 3 norms × 3 seeds, each exactly once
        assert (disk / "out" / "report.md").is_file()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@needs_mount
def test_a_read_only_output_folder_is_one_line(tmp_path: Path) -> None:
    spec, disk = write_spec(tmp_path, seeds=1), tmp_path / "ro"
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("this machine refuses mount (no CAP_SYS_ADMIN)")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        for args in (["ablate", str(spec), "--out", str(disk / "out")],
                     ["fit", "--out", str(disk / "run"), *FAST]):
            done = warm.run([sys.executable, "-m", "cnnlab.cli", *args], ENV, timeout=120)
            assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
            assert done.stderr.strip().splitlines()[-1].startswith("cnnlab: error: ")
            assert "Read-only file system; allowed: a writable --out / --storage" in done.stderr
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.slow
def test_a_report_written_while_trials_run_says_so(cli, tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path, seeds=1), tmp_path / "study"
    assert _ablate(cli, spec, out)[0] == 0
    study = Store.load(open_storage(str(out / "study.journal")), "tiny")
    key = "model.norm=batch, reg=none | seed=1"  # another worker's trial, still running
    study.enqueue_trial({"arm": "model.norm=batch, reg=none", "seed": 1}, user_attrs={"key": key})
    study.ask()
    status, stdout, err = cli("report", "tiny", "--out", out)
    assert status == 0, err
    assert "1 trials of tiny were still running or queued" in stdout
    text = (out / "report.md").read_text()
    assert "## Incomplete" in text and f"- {key}" in text


def test_an_export_joins_its_run_and_replaces_only_its_own_files(cli, finished_run: Path,
                                                                  tmp_path: Path) -> None:
    assert cli("export", finished_run)[0] == 0
    manifest = Manifest.read(finished_run)
    assert manifest is not None and "model.pt" in manifest.files  # the run can still be overwritten
    assert cli("export", finished_run)[0] == 0  # its own file: replaced
    status, _, err = fit(cli, finished_run, "--overwrite")
    assert status == 0, err
    theirs = tmp_path / "theirs.pt"
    theirs.write_bytes(b"a model of the user's")
    before = hashes(tmp_path)
    status, _, err = cli("export", finished_run, "--out", theirs)
    assert status == 2 and "exists and cnnlab did not write it" in err
    assert hashes(tmp_path) == before
    mine = tmp_path / "mine.pt"
    assert cli("export", finished_run, "--out", mine)[0] == 0
    assert cli("export", finished_run, "--out", mine)[0] == 0  # an earlier export: replaced


def test_a_plot_cnnlab_wrote_is_replaced_and_carries_the_proof(cli, tmp_path: Path) -> None:
    plot = tmp_path / "preview.png"
    for _ in range(2):
        status, _, err = cli("augment-preview", "--out", plot, "data.augment.hflip=true", "--samples", "2")
        assert status == 0, err
    assert Image.open(plot).info["Software"] == "cnnlab"


@pytest.mark.parametrize("landed", [False, True])
def test_a_kill_while_cnnlab_replaces_a_report_file_leaves_the_file_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, landed: bool) -> None:
    folder = tmp_path / "study"
    claim_study_folder(folder)
    write_owned(folder, "report.md", "old")
    real = files.write_atomic

    def killed(path: Path, data: str | bytes) -> None:  # dies around the rename into place
        if path.name == "report.md":
            if landed:
                real(path, data)
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(files, "write_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        write_owned(folder, "report.md", "new")
    monkeypatch.setattr(files, "write_atomic", real)
    assert (folder / "report.md").read_text() == ("new" if landed else "old")
    write_owned(folder, "report.md", "rerun")  # either content is cnnlab's: the rerun replaces it
    assert (folder / "report.md").read_text() == "rerun"
    (folder / "report.md").write_text("the user's notes")
    with pytest.raises(CnnlabError, match="cnnlab did not write this file"):
        write_owned(folder, "report.md", "again")


def _forge(run: Path, extra: dict[str, str]) -> None:
    """Add ``extra`` entries to the run's manifest, as a hostile or careless hand might."""
    manifest = json.loads((run / MANIFEST).read_text())
    manifest["files"].update(extra)
    (run / MANIFEST).write_text(json.dumps(manifest))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_forged_manifest_never_deletes_outside_its_folder(cli, finished_run: Path,
                                                           tmp_path: Path) -> None:
    """A manifest is data on disk: entries that leave the folder (``..``, absolute paths, a
    symlinked folder on the way) or mark a user's file append-only make it no manifest of
    cnnlab's, so ``--overwrite`` refuses and every file around stays byte-identical."""
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.csv").write_text("1,2,3\n")
    pristine = (finished_run / MANIFEST).read_text()
    cases = [({"../victim.txt": _digest(victim)}, None),
             ({str(victim): _digest(victim)}, None),
             ({"linked": f"symlink:{elsewhere}", "linked/data.csv": _digest(elsewhere / "data.csv")},
              "linked"),
             ({"notes.txt": files.APPEND_ONLY}, "notes.txt")]
    for forged, planted in cases:
        (finished_run / MANIFEST).write_text(pristine)
        _forge(finished_run, forged)
        if planted == "linked":
            os.symlink(elsewhere, finished_run / "linked")
        elif planted:
            (finished_run / planted).write_text("my notes")
        before = hashes(tmp_path)
        status, _, err = fit(cli, finished_run, "--overwrite")
        assert status == 2 and "cnnlab did not write" in err, (forged, err)
        assert hashes(tmp_path) == before, forged
        if planted:
            (finished_run / planted).unlink()


def test_links_are_never_followed_into_another_run(cli, finished_run: Path, tmp_path: Path,
                                                   monkeypatch) -> None:
    """``--out runs/latest`` (a link to a run) is refused, and a leftover ``.DIR.cnnlab-old``
    that is a link to another run never gets that run emptied (the two-rename replacement,
    where the system cannot swap two folders in one step, would use that name)."""
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    latest = tmp_path / "runs" / "latest"
    os.symlink(finished_run, latest)
    before = hashes(tmp_path)
    status, _, err = fit(cli, latest, "--overwrite")
    assert status == 2 and err.strip().endswith("allowed: a real folder (give the link's target "
                                                 "if you mean it)")
    assert hashes(tmp_path) == before
    other = tmp_path / "runs" / "other"
    assert fit(cli, other)[0] == 0
    os.symlink(other, tmp_path / "runs" / ".fit.cnnlab-old")
    before = hashes(other)
    status, _, err = fit(cli, finished_run, "--overwrite")
    assert status == 2 and ".fit.cnnlab-old exists and cnnlab did not make it" in err
    assert hashes(other) == before and (finished_run / "metrics.json").is_file()
    status, _, err = cli("ablate", write_spec(tmp_path, seeds=1, arms="norm only"), "--out", latest)
    assert status == 2 and "is a symbolic link" in err


def test_a_kill_while_a_staging_folder_is_made_never_blocks_the_rerun(
        cli, tmp_path: Path) -> None:
    """A SIGKILL between making a run's staging folder and writing its manifest used to leave a
    folder no rerun could prove was cnnlab's: the trial failed on every rerun. Now the folder
    appears with its manifest in it; half-made ones (and an older cnnlab's empty one) are
    cleared, while a user's file in the same place is kept."""
    out = tmp_path / "run"
    staging = staging_path(out)
    staging.mkdir()  # what an older cnnlab left: an empty staging folder
    half = tmp_path / f"{staging.name}.new-abc123"  # killed before the rename
    half.mkdir()
    (half / "..cnnlab.json.x1y2.tmp").write_text("{")  # write_atomic's temporary file
    users = tmp_path / f"{staging.name}.new-mine"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    status, _, err = cli("fit", "--out", str(out), *FAST)
    assert status == 0, err
    assert (out / "metrics.json").is_file() and not staging.exists() and not half.exists()
    assert (users / "notes.txt").read_text() == "mine"
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~ownership.umask()  # readable by colleagues


def test_predict_and_export_never_replace_a_runs_own_files(cli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli("fit", "--out", str(run), *FAST)[0] == 0
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.rglob("*") if p.is_file()}
    digits = tmp_path / "x.npz"
    np.savez(digits, x=np.zeros((2, 8, 8), dtype=np.uint8))
    for args in (("predict", str(run), str(digits), "--out", str(run / "metrics.json")),
                 ("export", str(run), "--out", str(run / "config.yaml")),
                 ("export", str(run), "--out", str(run / "history.csv"))):
        status, _, err = cli(*args)
        reason = ("exists, and this output never replaces a file" if args[0] == "predict"
                  else "exists and cnnlab did not write it")
        assert status == 2 and reason in err, (args, err)
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in run.rglob("*") if p.is_file()} == before


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(cli, tmp_path: Path) -> None:
    """A SIGKILL during ``export --out`` left its temporary file (8 MB) for good."""
    run, out = tmp_path / "run", tmp_path / "model.pt"
    assert cli("fit", "--out", str(run), *FAST)[0] == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    left = tmp_path / f".model.pt.{socket.gethostname()}:{dead}.k3j2h1g0.tmp"
    left.write_bytes(b"\0" * 1000)
    alive = tmp_path / f".model.pt.{socket.gethostname()}:{os.getpid()}.a1b2c3d4.tmp"
    alive.write_bytes(b"writing")  # a live writer's: kept
    mine = tmp_path / ".model.pt.notes.tmp"  # not a cnnlab name: kept
    mine.write_text("mine")
    assert cli("export", str(run), "--out", str(out))[0] == 0
    assert out.is_file() and not left.exists() and alive.exists() and mine.read_text() == "mine"


def test_clearing_half_made_staging_folders_touches_only_cnnlab_files(cli, tmp_path: Path) -> None:
    """What ``begin_run`` may remove beside ``--out``: a half-made staging folder holding only
    its manifest's temporary file, whose maker is gone. A live maker's, a link (and what it
    points to), a folder with anything else in it and every file outside stay byte for byte."""
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "data.csv").write_text("a,b\n1,2\n")
    out = work / "run"
    name = staging_path(out).name
    dead = work / f"{name}.new-dead"
    dead.mkdir()
    (dead / "..cnnlab.json.x1y2.tmp").write_text("{")
    live = work / f"{name}.new-live"
    live.mkdir()
    Manifest("partial", f"{socket.gethostname()}:{os.getppid()}").write(live)  # alive: our parent
    (work / f"{name}.new-link").symlink_to(outside, target_is_directory=True)
    odd = work / f"{name}.new-odd"
    (odd / "..cnnlab.json.a.tmp").mkdir(parents=True)  # a folder under a temporary file's name
    (odd / "..cnnlab.json.a.tmp" / "mine.txt").write_text("mine")
    (work / "notes.txt").write_text("beside")
    kept = {**{f"work/{k}": v for k, v in hashes(work).items() if not k.startswith(f"{name}.new-dead")},
            **{f"outside/{k}": v for k, v in hashes(outside).items()}}
    status, _, err = cli("fit", "--out", str(out), *FAST)
    assert status == 0, err
    assert not dead.exists() and (work / f"{name}.new-link").is_symlink()
    after = {**{f"work/{k}": v for k, v in hashes(work).items() if not k.startswith("run/")},
             **{f"outside/{k}": v for k, v in hashes(outside).items()}}
    assert after == kept


def test_clearing_a_dead_writers_temporary_file_touches_nothing_else(cli, tmp_path: Path) -> None:
    """``write_atomic`` removes only regular files named for a dead writer of this very file;
    a link under such a name (and its target), a folder under it, another file's temporary
    file and every file outside stay byte for byte."""
    run, out, outside = tmp_path / "run", tmp_path / "exports" / "model.pt", tmp_path / "outside"
    assert cli("fit", "--out", str(run), *FAST)[0] == 0
    out.parent.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("keep")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    host = socket.gethostname()
    (out.parent / f".model.pt.{host}:{dead}.k3j2h1g0.tmp").write_bytes(b"\0" * 1000)
    (out.parent / f".model.pt.{host}:{dead}.linklink.tmp").symlink_to(outside / "secret.txt")
    (out.parent / f".model.pt.{host}:{dead}.folder01.tmp").mkdir()
    (out.parent / f".model.pt.{host}:{dead}.folder01.tmp" / "x").write_text("x")
    (out.parent / f".other.pt.{host}:{dead}.k3j2h1g0.tmp").write_text("another file's")
    before = {k: v for k, v in hashes(tmp_path).items() if ".k3j2h1g0.tmp" not in k
              or k.endswith(f".other.pt.{host}:{dead}.k3j2h1g0.tmp")}
    assert cli("export", str(run), "--out", str(out))[0] == 0
    after = {k: v for k, v in hashes(tmp_path).items() if k != "exports/model.pt"}
    assert after == before
    assert (out.parent / f".model.pt.{host}:{dead}.linklink.tmp").is_symlink()


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``write_atomic`` on a full disk: the file it was replacing, its neighbours and the folder
    are as before, and its own temporary file is gone."""
    folder = tmp_path / "study"
    claim_study_folder(folder)
    write_owned(folder, "report.md", "old")
    (folder / "notes.txt").write_text("mine")
    before = hashes(tmp_path)

    def full(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device", dst)

    monkeypatch.setattr(ownership.os, "replace", full)
    with pytest.raises(OSError):
        ownership.write_atomic(folder / "report.md", "new")
    assert hashes(tmp_path) == before


class Killed(BaseException):
    """A SIGKILL at one step of an overwrite: nothing of cnnlab's runs after it."""


def _is_run(out: Path) -> bool:
    manifest = Manifest.read(out)
    return manifest is not None and manifest.kind == "run" and (out / "metrics.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("one_step", [True, False], ids=["exchange", "two-renames"])
def test_an_overwrite_killed_at_any_step_keeps_a_run_under_the_name(
        cli, finished_run: Path, monkeypatch, one_step: bool) -> None:
    """``fit --out X --overwrite`` killed before and after each rename of its folders (an atomic
    exchange, or two renames where the system has none), then rerun: ``X`` holds a whole run
    (old or new) the moment the kill lands — but for a kill between the two renames, after
    which the rerun puts the old run back first — and the finished rerun leaves nothing of
    cnnlab's beside ``X``. A SIGTERM between the renames used to leave ``X`` missing and the old
    run hidden in ``.X.cnnlab-old``, which the second next overwrite deleted."""
    steps: list[str] = []
    kill_at = 0

    def step(name: str, action):
        for when in ("before", "after"):
            steps.append(f"{when} {name}")
            if len(steps) == kill_at:
                raise Killed
            if when == "before":
                done = action()
        return done

    def rename(a, b) -> None:
        name = "rename out aside" if Path(a) == finished_run else "rename"
        step(name, lambda: os.rename(a, b))

    real_exchange = files._exchange
    monkeypatch.setattr(files, "_exchange", lambda a, b: one_step and step(
        "exchange", lambda: real_exchange(a, b)))
    monkeypatch.setattr(files, "os", SimpleNamespace(**{**vars(os), "rename": rename}))
    monkeypatch.setattr(run_module, "abort_run", lambda staging: None)  # a kill cleans nothing
    root = finished_run.parent.parent
    (root / "runs" / "notes.txt").write_text("mine, beside the run")
    (root / "runs" / "mine").mkdir()
    (root / "runs" / "mine" / "data.csv").write_text("a,b\n1,2\n")
    (root / "outside.txt").write_text("mine, outside")

    def users() -> dict[str, str]:
        return {k: v for k, v in hashes(root).items() if not k.startswith(("runs/fit", "runs/.fit"))}

    before = users()
    for kill_at in range(1, 20):
        steps.clear()
        try:
            status, _, err = fit(cli, finished_run, "--overwrite", f"seed={kill_at}")
        except Killed:
            if steps[-1] == "after rename out aside":
                assert not one_step and not finished_run.exists()
            else:
                assert _is_run(finished_run), steps
            assert users() == before, steps  # every rename and repair touched cnnlab's only
            continue
        assert status == 0, err
        break
    assert kill_at > (3 if one_step else 5)  # staging made, then the swap: each step was hit
    assert _is_run(finished_run)
    assert f"seed: {kill_at}\n" in (finished_run / "config.yaml").read_text()  # the last run
    assert [p.name for p in finished_run.parent.iterdir() if p.name.startswith(".")] == []
    assert users() == before


@pytest.mark.slow
def test_a_sigterm_between_the_two_renames_waits_for_the_second(cli, finished_run: Path,
                                                                 monkeypatch) -> None:
    """The reported case: SIGTERM right after the old run was moved aside. The command stops
    with 143 once the new run is in place, never between (``X`` used to be missing)."""
    real_rename = os.rename

    def rename(a, b) -> None:
        real_rename(a, b)
        if Path(a) == finished_run:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    monkeypatch.setattr(files, "os", SimpleNamespace(**{**vars(os), "rename": rename}))
    status, _, err = fit(cli, finished_run, "--overwrite", "seed=7")
    assert status == 143 and err.strip().endswith("rerun the same command to resume"), err
    assert _is_run(finished_run) and "seed: 7\n" in (finished_run / "config.yaml").read_text()
    assert [p.name for p in finished_run.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_no_write_goes_through_a_link_inside_cnnlabs_folders(cli, tmp_path: Path) -> None:
    """A study's journal or ``trials/`` made a link to a place outside, and a synced run folder
    that is a link: refused with one line, the outside byte for byte as it was. Before, the
    journal was appended to (and its "torn" last line cut) through the link, trial folders
    landed in the link's target, and sync marked the target's run."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "log.txt").write_text("someone's log, no newline at the end")
    (outside / "offline-run-20260101_000000-abc").mkdir()
    (outside / "offline-run-20260101_000000-abc" / "run-abc.wandb").write_bytes(b":W&B")
    spec = write_spec(tmp_path, seeds=1, arms="norm only")
    study = tmp_path / "study"
    assert cli("ablate", spec, "--out", study)[0] == 0
    before = hashes(outside)

    journal = study / "study.journal"
    journal.rename(tmp_path / "kept.journal")
    journal.symlink_to(outside / "log.txt")
    status, _, err = cli("ablate", spec, "--out", study, "--seeds", "2")
    assert status == 2 and "study.journal: is a symbolic link" in err, err
    assert hashes(outside) == before
    journal.unlink()
    (tmp_path / "kept.journal").rename(journal)

    trials = study / "trials"
    trials.rename(tmp_path / "kept-trials")
    trials.symlink_to(outside, target_is_directory=True)
    status, _, err = cli("ablate", spec, "--out", study, "--seeds", "2")
    assert status == 2 and err.strip().splitlines()[-1].startswith(
        f"cnnlab: error: {trials}: is a symbolic link"), err
    assert hashes(outside) == before and sorted(p.name for p in outside.iterdir()) == [
        "log.txt", "offline-run-20260101_000000-abc"]
    trials.unlink()
    (tmp_path / "kept-trials").rename(trials)
    status, _, err = cli("ablate", spec, "--out", study, "--seeds", "2")
    assert status == 0, err  # moved back: the refused trials run now

    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "offline-run-20260101_000000-abc").symlink_to(
        outside / "offline-run-20260101_000000-abc", target_is_directory=True)
    status, out, _ = cli("sync", "--dry-run", runs)
    assert status == 0 and "0 offline W&B runs to sync" in out, out  # the link is no run
    assert hashes(outside) == before


@pytest.mark.slow
@pytest.mark.parametrize("becomes", ["a file", "a link"])
def test_out_turned_into_a_file_or_a_link_during_the_fit_is_one_line(
        cli, tmp_path: Path, monkeypatch, becomes: str) -> None:
    """A traceback after training (``iterdir`` of a file); the link's target is never written."""
    out, target = tmp_path / "run", tmp_path / "elsewhere"
    commit = run_module.commit_run

    def changed_meanwhile(staging: Path, final: Path) -> None:
        if becomes == "a file":
            final.write_text("now mine")
        else:
            target.mkdir()
            final.symlink_to(target, target_is_directory=True)
        commit(staging, final)

    monkeypatch.setattr(run_module, "commit_run", changed_meanwhile)
    status, _, err = fit(cli, out)
    assert status == 2 and "Traceback" not in err, err
    assert ("is a file" if becomes == "a file" else "is a symbolic link") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        ["run"] if becomes == "a file" else ["elsewhere", "run"])
    assert out.read_text() == "now mine" if becomes == "a file" else list(target.iterdir()) == []


@pytest.mark.slow
def test_a_failed_second_rename_puts_the_old_run_back_at_once(cli, finished_run: Path,
                                                              monkeypatch) -> None:
    """Where the system cannot swap in one step, the new run's rename failing (a full disk's
    ENOSPC) undoes the first: the old run is back under its name before the one line, and
    nothing of the user's beside it changed."""
    import errno

    real_rename = os.rename

    def rename(a, b) -> None:
        if Path(b) == finished_run and Path(a).name.endswith(".cnnlab-partial"):
            raise OSError(errno.ENOSPC, "No space left on device", str(b))
        real_rename(a, b)

    root = finished_run.parent.parent
    (root / "runs" / "notes.txt").write_text("mine")
    old = hashes(finished_run)
    before = {k: v for k, v in hashes(root).items() if not k.startswith("runs/fit")}
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    monkeypatch.setattr(files, "os", SimpleNamespace(**{**vars(os), "rename": rename}))
    status, _, err = fit(cli, finished_run, "--overwrite", "seed=5")
    assert status == 2 and "No space left on device" in err, err
    assert hashes(finished_run) == old  # the old run, whole, under its name
    assert {k: v for k, v in hashes(root).items() if not k.startswith("runs/fit")} == before
    assert [p.name for p in finished_run.parent.iterdir() if p.name.startswith(".")] == []
