"""What a reviewer gets in W&B, read back from the offline run files (no network)."""

import csv
import io
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_search import write_spec as write_search_spec
from wandb_records import finished_records, run_contents

SPEC = """
name: tiny
description: Two norms × two learning rates.
overrides: [trainer.max_epochs=1, "model.channels=[8]", "model.hidden_units=[16]",
            data.batch_size=64]
factors:
  model.norm: [batch, none]
  opt:
    slow: {optim.lr: 0.003}
    fast: {optim.lr: 0.01}
seeds: 2
baseline: {model.norm: batch, opt: slow}
"""


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)  # cnnlab's default: offline runs to read


def _runs(folder: Path) -> list[Path]:
    return sorted(folder.glob("wandb/offline-run-*"))


def _record(run: Path) -> Path:
    (path,) = run.glob("run-*.wandb")
    return path


def _artifacts(path: Path) -> dict[str, list[str]]:
    return {r.artifact.name: sorted(e.path for e in r.artifact.manifest.contents)
            for r in finished_records(path) if r.WhichOneof("record_type") == "artifact"}


def test_a_fit_logs_real_pixels_epoch_charts_and_its_model(cli, tmp_path: Path) -> None:
    out = tmp_path / "fit"
    status, _, err = cli("fit", "--out", out, "trainer.max_epochs=2", "model.channels=[8]",
                         "model.hidden_units=[16]", "data.augment.hflip=true",
                         "trainer.target_acc=1.0")  # never reached: a censored epochs_to_target
    assert status == 0, err
    (run,) = _runs(out)
    media = run / "files" / "media" / "images"
    pngs = {str(p.relative_to(media)): np.asarray(Image.open(p)) for p in media.rglob("*.png")}
    filters = [a for name, a in pngs.items() if name.startswith("filters")]
    previews = [a for name, a in pngs.items() if name.startswith("augment/preview")]
    assert len(filters) == 2 and len(previews) == 1  # start and end are two images now
    for pixels in (*filters, *previews):
        assert pixels.dtype == np.uint8 and int(pixels.max()) - int(pixels.min()) > 100
        assert len(np.unique(pixels)) > 10  # not the 0/1 of floats cast to uint8
    assert not np.array_equal(filters[0], filters[1])  # training changed the filters

    record = _record(run)
    metrics = {(r.metric.name or r.metric.glob_name): r.metric for r in finished_records(record)
               if r.WhichOneof("record_type") == "metric"}
    assert metrics["train/*"].step_metric == "epoch" and metrics["val/*"].step_metric == "epoch"
    assert metrics["val/acc"].summary.max and metrics["val/loss"].summary.min
    contents = run_contents(record)
    history = [row for row in contents["history"] if "val/acc" in row]
    assert [row["epoch"] for row in history] == [0, 1]
    assert contents["summary"]["test/acc"] == pytest.approx(contents["summary"]["test_acc"])
    assert json.loads((out / "metrics.json").read_text())["epochs_to_target"] is None
    assert contents["summary"]["epochs_to_target"] == 3  # its bound, max_epochs + 1 (W&B drops None)
    assert contents["summary"]["epochs_to_target_censored"] is True
    assert contents["summary"]["val/acc"]["max"] == max(row["val/acc"] for row in history)
    (files,) = _artifacts(record).values()  # log_model defaults to true for a fit
    assert files[0].endswith(".ckpt") and files[1] == "config.yaml"
    assert "torch==" in (run / "files" / "requirements.txt").read_text()  # its environment


def _table(run: Path, name: str) -> list[dict]:
    (path,) = (run / "files" / "media" / "table").glob(f"{name}_*.table.json")
    data = json.loads(path.read_text())
    return [dict(zip(data["columns"], row, strict=True)) for row in data["data"]]


@pytest.mark.slow
def test_an_ablation_is_reviewable_in_wandb(cli, tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(SPEC)
    out = tmp_path / "out"
    status, _, err = cli("ablate", tmp_path / "tiny.yaml", "--out", out)
    assert status == 0, err
    trials = sorted(out.glob("trials/*/seed*/wandb/offline-run-*"))
    assert len(trials) == 8
    for run in trials:
        config = run_contents(_record(run))["config"]
        assert config["study"] == "tiny" and config["seed"] in (0, 1)
        assert set(config["factor"]) == {"model.norm", "opt"}  # bundles by their level name
        assert config["factor"] == config["factor_level"]  # no numeric factor here: all text
        assert config["arm"] == f"model.norm={config['factor']['model.norm']}, " \
                                f"opt={config['factor']['opt']}"
        assert not _artifacts(_record(run))  # no checkpoint per trial
        assert not (run / "files" / "requirements.txt").exists()  # the summary run lists them

    (summary,) = _runs(out)
    assert "lightning==" in (summary / "files" / "requirements.txt").read_text()
    rows = _table(summary, "arms")
    results = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert [r["arm"] for r in rows] == list(dict.fromkeys(r["arm"] for r in results))
    for row in rows:
        accs = [float(r["test_acc"]) for r in results if r["arm"] == row["arm"]]
        assert row["test_acc"] == pytest.approx(statistics.mean(accs))  # a number, not text
        assert row["seeds"] == 2 and row["failed"] == 0
        assert (row["p"] is None) == (row["arm"] == "model.norm=batch, opt=slow")
        assert row["test_acc_low"] <= row["test_acc"] <= row["test_acc_high"]
        assert (row["delta"] is None) == (row["arm"] == "model.norm=batch, opt=slow")
    checks = _table(summary, "checks")  # the confirmatory family: every arm vs the baseline
    assert sorted(c["arm"] for c in checks) == sorted(r["arm"] for r in rows[1:])
    assert all(c["outcome"] in ("higher", "lower", "equivalent", "undecided") for c in checks)
    assert [look["seeds"] for look in _table(summary, "looks")] == [2]
    contents = run_contents(_record(summary))
    assert contents["summary"]["n_trials"] == 8 and contents["summary"]["n_looks"] == 1
    tables = {k.removesuffix("/_type") for row in contents["history"] for k, v in row.items()
              if k.endswith("/_type") and v == "table-file"}
    assert {"arms", "checks", "looks"} <= tables
    assert not tables & set(contents["summary"])  # no summary number shares a table's key
    assert contents["run"].notes == "Two norms × two learning rates."
    assert contents["run"].job_type == "summary"
    assert contents["summary"]["model.norm=none, opt=fast/test_acc/mean"] == pytest.approx(
        rows[-1]["test_acc"])
    assert any(key.startswith("_wandb/visualize/charts/test_acc_by_arm")
               for key in contents["config"])
    (report,) = [files for name, files in _artifacts(_record(summary)).items()
                 if name == "tiny-report"]
    assert {"report.md", "results.csv", "bars.png", "forest.png", "study.journal"} <= set(report)

    status, _, err = cli("ablate", tmp_path / "tiny.yaml", "--out", out)  # a rerun: same run
    assert status == 0, err
    first, second = _runs(out)
    assert first.name.split("-")[-1] == second.name.split("-")[-1]  # one stable run id
    steps = [max(row["_step"] for row in run_contents(_record(r))["history"])
             for r in (first, second)]
    assert steps == [0, 1]  # the rerun's tables come after the first's once both are synced

    status, stdout, err = cli("sync", "--dry-run", out)
    assert status == 0, err
    assert f"{len(trials) + 2} offline W&B runs to sync" in stdout
    assert all(str(run) in stdout for run in trials)


@pytest.mark.slow
def test_one_process_writes_a_summary_run_while_the_next_spec_trains(cli, tmp_path: Path
                                                                     ) -> None:
    """With one worker the trials train in the main process while a thread writes the previous
    spec's summary run: neither run ends, or logs into, the other."""
    specs = []
    for name in ("first", "second"):
        specs.append(tmp_path / f"{name}.yaml")
        specs[-1].write_text(SPEC.replace("name: tiny", f"name: {name}"))
    status, _, err = cli("ablate", *specs, "--out", tmp_path / "out", "--workers", "1")
    assert status == 0, err
    for name in ("first", "second"):
        out = tmp_path / "out" / name
        trials = sorted(out.glob("trials/*/seed*/wandb/offline-run-*"))
        assert len(trials) == 8
        for run in trials:
            contents = run_contents(_record(run))
            assert contents["config"]["study"] == name and contents["run"].job_type != "summary"
            assert [row["epoch"] for row in contents["history"] if "val/acc" in row] == [0]
            assert "test_acc" in contents["summary"]
        (summary,) = _runs(out)
        contents = run_contents(_record(summary))
        assert contents["run"].job_type == "summary" and contents["run"].run_group == name
        assert len(_table(summary, "arms")) == 4


def test_sync_without_network_is_one_line_within_seconds(cli, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tiny.yaml").write_text(SPEC.replace("seeds: 2", "seeds: 1")
                                        .replace("  opt:\n    slow: {optim.lr: 0.003}\n"
                                                 "    fast: {optim.lr: 0.01}\n", "")
                                        .replace(", opt: slow", ""))
    out = tmp_path / "out"
    assert cli("ablate", tmp_path / "tiny.yaml", "--out", out)[0] == 0
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    start = time.monotonic()
    status, _, err = cli("sync", out)
    assert time.monotonic() - start < 15
    assert status == 2 and err.count("\n") == 1
    assert "W&B server http://127.0.0.1:9: cannot connect" in err and "nothing was synced" in err
    assert not list(out.rglob("*.wandb.synced"))
    status, _, err = cli("sync", "no-such-study")
    assert status == 2 and "no such folder or study under reports/" in err


@pytest.mark.slow
def test_a_search_has_a_run_per_trial_and_a_numeric_trials_table(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    status, _, err = cli("tune", write_search_spec(tmp_path), "--out", out, "--trials", "2")
    assert status == 0, err
    for number in (0, 1):
        (run,) = _runs(out / "trials" / f"{number:04d}")  # beside the trial's fold runs
        contents = run_contents(_record(run))
        assert contents["run"].job_type == "trial" and contents["config"]["trial"] == number
        assert "optim.lr" in contents["config"]["params"]
        scores = contents["summary"]["fold_scores"]
        assert contents["summary"]["cv_mean"] == pytest.approx(statistics.mean(scores))
    fold = run_contents(_record(_runs(out / "trials" / "0000" / "fold1")[0]))["config"]
    assert (fold["trial"], fold["fold"], fold["study"]) == (0, 1, "small")
    (summary,) = _runs(out)
    rows = _table(summary, "trials")
    trials_csv = list(csv.DictReader(io.StringIO((out / "trials.csv").read_text())))
    assert [r["number"] for r in rows] == [int(r["number"]) for r in trials_csv]
    for row, line in zip(rows, trials_csv, strict=True):
        assert row["cv_mean"] == pytest.approx(float(line["cv_mean"])) if line["cv_mean"] else \
            row["cv_mean"] is None
    contents = run_contents(_record(summary))
    assert contents["summary"]["test_acc"] > 0 and "best/optim.lr" in contents["summary"]
    assert contents["summary"]["n_trials"] == 2 and "trials" not in contents["summary"]
    assert contents["summary"]["trials/_type"] == "table-file"  # the table, as in every run kind
    (files,) = [f for name, f in _artifacts(_record(summary)).items() if name == "small-report"]
    assert {"search.md", "trials.csv", "study.journal"} <= set(files)
    refit = run_contents(_record(_runs(out / "refit")[0]))
    assert refit["run"].job_type == "refit" and len(_artifacts(_record(_runs(out / "refit")[0])))
