"""W&B: offline by default, the config and final metrics land in the run file, runs finish."""

import json
from pathlib import Path

import pytest
from wandb_records import run_contents

from cnnlab.config import load_config
from cnnlab.tracking.runs import stable_id, wandb_mode


def test_mode_defaults_to_offline_unless_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode(load_config()) == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(load_config()) == "disabled"
    assert wandb_mode(load_config(overrides=["wandb.mode=online"])) == "online"


def test_offline_fit_records_config_and_final_metrics(cli, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    runs = []
    for name, norm in (("first", "batch"), ("second", "layer")):  # two runs in one process
        out = tmp_path / name
        named = [f"wandb.name={name}"] if name == "first" else []  # second: its folder's name
        status, _, err = cli("fit", "--out", out, "trainer.max_epochs=2", f"model.norm={norm}",
                             "model.channels=[8]", *named, "wandb.tags=[t1,t2]")
        assert status == 0, err
        (path,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
        runs.append((out, run_contents(path)))

    for (out, contents), norm in zip(runs, ("batch", "layer"), strict=True):
        metrics = json.loads((out / "metrics.json").read_text())
        assert contents["config"]["model"]["norm"] == norm
        assert contents["config"]["model"]["channels"] == [8]
        assert contents["config"]["trainer"]["max_epochs"] == 2
        summary = contents["summary"]
        for key in ("test_acc", "val_acc", "train_loss", "epochs"):
            assert summary[key] == pytest.approx(metrics[key])
        epochs = [row for row in contents["history"] if "train/acc" in row]
        assert len(epochs) == 2  # one history row of training metrics per epoch
        run = contents["run"]
        assert run.display_name == out.name  # not W&B's run-<id>
        assert run.project == "cnnlab" and run.job_type == "fit"
        assert list(run.tags) == ["t1", "t2"]
    assert runs[0][1]["run"].run_id != runs[1][1]["run"].run_id


def test_disabled_mode_writes_no_wandb_files(cli, tmp_path: Path) -> None:
    status, _, _ = cli("fit", "--out", tmp_path / "r", "trainer.max_epochs=1",
                       "wandb.mode=disabled", "model.channels=[8]")
    assert status == 0
    assert not (tmp_path / "r" / "wandb").exists()


def test_studies_of_one_name_in_other_folders_get_their_own_summary_run(tmp_path: Path) -> None:
    """``--out reports/x`` keeps the spec's study name; its summary run must not be the one of
    ``reports/<name>`` (``cnnlab sync`` merged the two)."""
    default = stable_id("cnnlab", "norm", Path("reports/norm"))
    assert default == stable_id("cnnlab", "norm", tmp_path / "reports" / "norm")  # as before
    assert stable_id("cnnlab", "norm", Path("reports/x")) != default
    assert stable_id("cnnlab", "norm", tmp_path / "a") != stable_id("cnnlab", "norm", tmp_path / "b")
