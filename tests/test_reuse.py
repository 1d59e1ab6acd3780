"""Trained models people can reuse: Lightning checkpoints, self-contained exports, predict, tidy
outputs, command-line habits and progress lines."""

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import warm
from omegaconf import OmegaConf
from PIL import Image
from test_nothing_lost import hashes

import cnnlab
from cnnlab import config
from cnnlab.config import recorded, to_dict
from cnnlab.data.datamodule import DataModule
from cnnlab.errors import CnnlabError
from cnnlab.export import export, load_classifier, load_exported
from cnnlab.training.module import Classifier
from cnnlab.training.trainer import build_trainer

UMASK = 0o027


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits fit made by a separate process under umask 027 (group may read, others not)."""
    out = tmp_path_factory.mktemp("reuse") / "run"
    done = warm.run([sys.executable, "-m", "cnnlab.cli", "fit", "--out", str(out),
                     "trainer.max_epochs=3", "wandb.mode=disabled"], umask=UMASK, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def normalised_test(module: Classifier) -> tuple[DataModule, torch.Tensor, torch.Tensor]:
    """The run's data module and its test split as raw pixels and as the network saw them."""
    cfg = recorded(module.hparams.config)
    data = DataModule(cfg.data, cfg.seed)
    data.setup("test")
    x = data.test[0]
    return data, x * data.std + data.mean, x


def test_every_file_of_a_run_follows_the_umask(run_dir: Path) -> None:
    paths = [p for p in run_dir.rglob("*")]
    assert any(p.name == "best.ckpt" for p in paths) and any(p.name == "metrics.json" for p in paths)
    for path in [run_dir, *paths]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o777 if path.is_dir() else 0o666) & ~UMASK, (path, oct(mode))


def test_load_from_checkpoint_reproduces_the_test_accuracy(run_dir: Path, tmp_path: Path) -> None:
    module = Classifier.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt",
                                             weights_only=True)
    cfg = recorded(module.hparams.config)
    assert cfg.trainer.precision != "auto"  # the config as the run resolved it
    data, _, _ = normalised_test(module)
    trainer = build_trainer(cfg.trainer, tmp_path, [])
    (test,) = trainer.test(module, datamodule=data, verbose=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert test["test/acc"] == pytest.approx(metrics["test_acc"], abs=1e-7)
    model = cnnlab.load(run_dir)  # a ready model: eval mode, classes and input shape beside it
    assert not model.training and model.classes == [str(d) for d in range(10)]
    assert model.input_shape == (1, 8, 8)


def test_a_checkpoint_and_an_export_rebuild_their_recorded_config_never_todays_defaults(
        run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defaults that changed since the run (another norm, width, learning rate) change nothing
    of a loaded model; a record that lacks a key is refused naming it, not filled in."""
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    saved = torch.load(ckpt, weights_only=True)["hyper_parameters"]["config"]
    newer = OmegaConf.merge(config._defaults(), {"model": {"norm": "none", "hidden_units": [7]},
                                                 "optim": {"lr": 0.5}, "seed": 99})
    monkeypatch.setattr(config, "_defaults", lambda: newer)
    assert config.load_config().model.hidden_units == [7]  # the defaults did change
    module = load_classifier(ckpt)
    assert to_dict(recorded(module.hparams.config)) == saved
    exported = export(run_dir, tmp_path / "model.pt", False)
    assert exported is not None and (tmp_path / "model.pt").is_file()
    assert torch.load(tmp_path / "model.pt", weights_only=True)["config"] == saved
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(cnnlab.load(tmp_path / "model.pt")(x), cnnlab.load(run_dir)(x))

    old = torch.load(ckpt, weights_only=True)
    del old["hyper_parameters"]["config"]["model"]["init"]  # as a cnnlab before model.init
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(CnnlabError, match=r"model\.init: missing from the recorded config"):
        load_classifier(tmp_path / "old.ckpt")
    with pytest.raises(dataclasses.FrozenInstanceError):  # frozen, like every config
        recorded(saved).model.norm = "none"  # type: ignore[misc]


def test_an_export_gives_on_raw_pixels_what_cnnlab_gives_on_normalised_ones(
        cli, run_dir: Path, tmp_path: Path) -> None:
    module = Classifier.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt",
                                             weights_only=True).eval()
    _, raw, normalised = normalised_test(module)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5  # pixels as the dataset stores them
    with torch.no_grad():
        expected = module(normalised)
    for fuse in ([], ["--fuse-bn"]):
        out = tmp_path / f"model{len(fuse)}.pt"
        status, stdout, err = cli("export", run_dir, *fuse, "--out", out)
        assert status == 0, err
        exported = load_exported(out)
        with torch.no_grad():
            logits = exported(raw)
        assert torch.equal(logits.argmax(1), expected.argmax(1))
        assert torch.allclose(logits, expected, atol=1e-3)
        assert exported.classes == module.hparams.classes
        assert (not any(isinstance(m, torch.nn.BatchNorm2d) for m in exported.modules())) == bool(fuse)
    assert "batch norm folded" in stdout


def test_predict_on_a_folder_of_pngs_and_an_npz_matches_the_exported_model(
        cli, run_dir: Path, tmp_path: Path) -> None:
    assert cli("export", run_dir, "--out", tmp_path / "model.pt")[0] == 0
    exported = load_exported(tmp_path / "model.pt")
    module = Classifier.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt",
                                             weights_only=True)
    _, raw, _ = normalised_test(module)
    images = (raw[:12, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img, mode="L").save(folder / f"digit{i:02d}.png")
    decoded = torch.from_numpy(images).float().div(255).unsqueeze(1)  # what the PNGs hold
    index, confidence = exported.predict(decoded)
    status, _, err = cli("predict", tmp_path / "model.pt", folder, "--out", tmp_path / "p.csv")
    assert status == 0, err
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [r["input"] for r in rows] == [str(folder / f"digit{i:02d}.png") for i in range(12)]
    assert [r["class"] for r in rows] == [exported.classes[i] for i in index.tolist()]
    assert [float(r["probability"]) for r in rows] == pytest.approx(confidence.tolist(), abs=1e-4)
    np.savez(tmp_path / "x.npz", x=images)  # uint8 N×H×W, as cnnlab's npz source reads it
    status, stdout, err = cli("predict", run_dir, tmp_path / "x.npz")  # the run folder itself
    assert status == 0, err
    assert stdout.count(" x.npz[") == 12 or stdout.count("x.npz[") == 12
    status, _, err = cli("predict", tmp_path / "model.pt", tmp_path / "missing.png")
    assert status == 2 and "missing.png does not exist" in err
    status, _, err = cli("predict", tmp_path / "model.pt", folder, "--out", tmp_path / "p.csv")
    assert status == 2 and "p.csv: exists, and this output never replaces a file" in err
    assert "did not write" not in err  # it did: the reason was false


def test_fuse_bn_on_a_model_without_batch_norm_says_so_and_exports_unfused(
        cli, tmp_path: Path) -> None:
    run = tmp_path / "group"
    assert cli("fit", "--out", run, "model.norm=group", "trainer.max_epochs=1",
               "wandb.mode=disabled", "trainer.images=false")[0] == 0
    status, stdout, err = cli("export", run / "checkpoints" / "best.ckpt", "--fuse-bn")
    assert status == 0, err
    assert "no batch norm in this model (model.norm=group)" in stdout and "unfused model's" not in stdout
    model = cnnlab.load(run / "model_fused.pt")  # beside the run, as for a run folder
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())


def test_default_outputs_go_under_runs_not_the_current_folder(cli, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    status, _, err = cli("augment-preview", "data.augment.hflip=true")
    assert status == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert (tmp_path / "runs" / "augment-preview" / "preview.png").is_file()


TINY = """
name: tiny
overrides: ["model.channels=[4]", data.batch_size=256, trainer.max_epochs=3]
factors:
  model.norm: [batch, none]
seeds: 1
"""
SEARCH = """
name: small
overrides: ["model.channels=[4]", data.batch_size=256, trainer.max_epochs=3]
space:
  optim.lr: {type: float, low: 0.001, high: 0.01, log: true}
folds: 2
trials: 2
sampler: {name: random, seed: 0}
pruner: {name: none}
"""


@pytest.mark.slow
def test_ablate_and_tune_overrides_reach_every_trial_and_are_part_of_the_study(
        cli, tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY)
    out = tmp_path / "ablation"
    status, stdout, err = cli("ablate", tmp_path / "tiny.yaml", "trainer.max_epochs=1",
                              "wandb.mode=disabled", "--out", out)
    assert status == 0, err
    configs = list((out / "trials").rglob("config.yaml"))
    assert len(configs) == 2 and all("max_epochs: 1\n" in c.read_text() for c in configs)
    # not a terminal: a line per finished trial with its value, elapsed time and ETA
    assert "tiny [1/2] model.norm=batch | seed=0: test_acc " in stdout and "ETA 0:" in stdout
    before = hashes(out)
    status, _, err = cli("ablate", tmp_path / "tiny.yaml", "trainer.max_epochs=2",
                         "wandb.mode=disabled", "--out", out)
    assert status == 2 and "different spec" in err and hashes(out) == before
    status, _, err = cli("ablate", tmp_path / "tiny.yaml", "model.norm=layer", "--out", out)
    assert status == 2 and "override model.norm: the spec tiny varies it between arms" in err

    (tmp_path / "small.yaml").write_text(SEARCH)
    out = tmp_path / "search"
    status, stdout, err = cli("tune", tmp_path / "small.yaml", "trainer.max_epochs=1",
                              "wandb.mode=disabled", "--out", out)
    assert status == 0, err
    folds = list((out / "trials").rglob("config.yaml"))
    assert len(folds) == 4 and all("max_epochs: 1\n" in c.read_text() for c in folds)
    assert "max_epochs: 1\n" in (out / "refit" / "config.yaml").read_text()
    assert "small [1/2] slot 0: CV accuracy " in stdout
    status, _, err = cli("tune", tmp_path / "small.yaml", "wandb.mode=disabled", "--out", out)
    assert status == 2 and "different spec" in err
    status, _, err = cli("tune", tmp_path / "small.yaml", "optim.lr=0.1", "--out", out)
    assert status == 2 and "override optim.lr: the spec small searches it" in err


def test_lightning_and_hydra_habits_get_one_line_pointing_to_key_value(cli) -> None:
    status, _, err = cli("fit", "--trainer.max_epochs", "2")
    assert status == 2 and err.strip().endswith("allowed: trainer.max_epochs=2")
    status, _, err = cli("fit", "+trainer.max_epochs=2")
    assert status == 2 and "trainer.max_epochs=..., no Hydra/Lightning prefixes" in err
    assert len(err.strip().splitlines()) == 1


def test_help_describes_every_command_and_shows_defaults(cli) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    top = subprocess.run([sys.executable, "-m", "cnnlab.cli", "--help"], capture_output=True,
                         text=True, env=env).stdout
    for command in ("fit", "summary", "lr-find", "augment-preview", "export", "predict",
                    "ablate", "tune", "report", "sync"):
        assert f"  {command} " in top
    lr = subprocess.run([sys.executable, "-m", "cnnlab.cli", "lr-find", "--help"],
                        capture_output=True, text=True, env=env).stdout
    for default in ("(default: 1e-06)", "(default: 1)", "(default: 100)",
                    "(default: runs/lr-find/lr_find.png)"):
        assert default in lr


def test_print_config_shows_what_auto_resolves_to(cli) -> None:
    status, stdout, _ = cli("fit", "--print-config")
    assert status == 0
    assert "precision: auto" not in stdout and "channels_last: auto" not in stdout
    assert ("precision: bf16-mixed" in stdout) or ("precision: 32-true" in stdout)


def test_predict_csv_has_unix_line_ends(cli, tmp_path: Path) -> None:
    run, csv_path = tmp_path / "run", tmp_path / "p.csv"
    assert cli("fit", "--out", str(run), "trainer.max_epochs=1", "model.channels=[8]")[0] == 0
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 8, 8), np.uint8))
    assert cli("predict", str(run), str(tmp_path / "x.npz"), "--out", str(csv_path))[0] == 0
    data = csv_path.read_bytes()
    assert b"\r\n" not in data and data.count(b"\n") == 3  # header and two rows


def test_predict_warns_once_naming_the_likely_cause_of_mis_scaled_pixels(
        cli, run_dir: Path, tmp_path: Path) -> None:
    """Raw digits as uint8 0–16 were read as /255 and got accuracy 0.13 without a word."""
    module = Classifier.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt",
                                             weights_only=True)
    _, raw, _ = normalised_test(module)
    digits = (raw[:, 0] * 16).round().numpy()  # the 0–16 integers sklearn ships
    cases = {
        "ok": ((digits / 16).astype(np.float32), None),
        "uint8_0_16": (digits.astype(np.uint8), "look like 0–16 integers read as /255"),
        "float_0_255": ((digits * 255 / 16).astype(np.float32), "look like 0–255 values not divided"),
        "float_0_16": (digits.astype(np.float32), "look like 0–16 values (scikit-learn's digits) "
                       "not divided by 16"),  # said "0–255 values" before
        "inverted": ((1 - digits / 16).astype(np.float32), "pixels look inverted"),
    }
    for name, (x, cause) in cases.items():
        np.savez(tmp_path / f"{name}.npz", x=x)
        status, _, err = cli("predict", run_dir, tmp_path / f"{name}.npz", "--out",
                             tmp_path / f"{name}.csv")
        assert status == 0 and (tmp_path / f"{name}.csv").is_file(), err
        warnings = [line for line in err.splitlines() if line.startswith("warning:")]
        if cause is None:
            assert warnings == [], err
        else:
            assert len(warnings) == 1 and cause in warnings[0], err
            assert "training pixels had mean 0." in warnings[0]
    model = cnnlab.load(run_dir)
    good = torch.from_numpy(digits / 16).float().unsqueeze(1)
    assert all(model.input_warning(good[i : i + 1]) is None for i in range(len(good)))  # one image
    with pytest.warns(UserWarning, match="0–255 values"):
        model.predict(good * 255)
