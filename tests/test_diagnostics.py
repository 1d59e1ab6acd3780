"""Batch norm folded into convs, the BN train/eval gap, and the monitoring images of a fit."""

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.config import load_config
from cnnlab.data.sources import load as load_data
from cnnlab.diagnostics import bn_train_eval_gap, fuse_bn, max_abs_diff
from cnnlab.export import load, load_exported
from cnnlab.models.convnet import ConvNet


def _random_bn_model(rng: random.Random) -> tuple[ConvNet, tuple[int, int, int]]:
    channels = [rng.choice([4, 8, 16]) for _ in range(rng.randint(1, 3))]
    kernel = rng.choice([1, 3, 5])
    overrides = [f"model.channels={channels}", f"model.kernel_size={kernel}",
                 f"model.padding={kernel // 2}", f"model.stride={rng.choice([1, 1, 2])}",
                 f"model.pool={rng.choice(['max', 'avg', 'none'])}", "model.norm=batch",
                 f"model.hidden_units=[{rng.choice([8, 32])}]"]
    shape = (rng.choice([1, 3]), 16, 16)
    model = ConvNet(load_config(overrides=overrides).model, shape, 10)
    model.train()
    for _ in range(3):  # non-trivial running statistics and affine parameters
        model(torch.randn(32, *shape) * 2 + 0.5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.5, 0.5)
    return model.eval(), shape


@pytest.mark.parametrize("seed", range(6))
def test_fused_equals_unfused_on_random_configs(seed: int) -> None:
    torch.manual_seed(seed)
    model, shape = _random_bn_model(random.Random(seed))
    fused = fuse_bn(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert max_abs_diff(model, fused, torch.randn(200, *shape)) <= 1e-4
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # original kept


def test_bn_gap_appears_when_batch_statistics_differ_from_running_ones() -> None:
    torch.manual_seed(0)
    model = ConvNet(load_config(overrides=["model.dropout=0"]).model, (1, 8, 8), 10)
    model.train()(torch.randn(64, 1, 8, 8))  # running stats from a different distribution
    x = torch.randn(200, 1, 8, 8) * 3 + 1
    y = model.eval()(x).argmax(1)
    before = [m.running_mean.clone() for m in model.modules()
              if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn_train_eval_gap(model, x, y, batch=8) < 0
    after = [m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    no_bn = ConvNet(load_config(overrides=["model.norm=layer"]).model, (1, 8, 8), 10)
    assert bn_train_eval_gap(no_bn, x, y, batch=8) is None


@pytest.mark.slow
def test_fit_writes_monitoring_images_and_export_fuses(cli, tmp_path: Path) -> None:
    from PIL import Image

    run = tmp_path / "run"
    assert cli("fit", "--out", run, "trainer.max_epochs=2", "wandb.mode=disabled")[0] == 0
    for name in ("curves.png", "filters_start.png", "filters_end.png"):
        with Image.open(run / name) as img:
            assert img.size[0] > 50
    assert (run / "filters_start.png").read_bytes() != (run / "filters_end.png").read_bytes()
    with Image.open(run / "filters_end.png") as img:  # a titled figure, not a bare grid
        gray = np.asarray(img.convert("L"))
    title = gray[: gray.shape[0] // 6]  # the title's two lines of text above the filters
    assert img.size[0] > 400 and (title < 100).any() and (title > 250).mean() > 0.8
    metrics = (run / "metrics.json").read_text()
    assert "bn_train_eval_gap" in metrics
    status, out, err = cli("export", run, "--fuse-bn")
    assert status == 0, err
    assert "max |fused − original|" in out and "× the unfused model's" in out
    low, median, high = map(float, re.search(  # noise said as a spread, not printed as a result
        r"speed ([\d.]+)× the unfused model's \(median of 7 timings side by side, from "
        r"([\d.]+)× to ([\d.]+)×", out).group(2, 1, 3))
    assert low <= median <= high
    fused = load_exported(run / "model_fused.pt")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    original = load(run)
    pixels = load_data(load_config().data).x[:300]  # in [0, 1], as the dataset stores them
    assert max_abs_diff(original, fused, pixels) <= 1e-4
    status, _, err = cli("export", tmp_path / "missing")
    assert status == 2 and "no such file" in err


def test_lr_find_plots_and_suggests(cli, tmp_path: Path) -> None:
    out = tmp_path / "lr.png"
    status, stdout, err = cli("lr-find", "--out", out, "--num-training", "60")
    assert status == 0, err
    suggestion = float(stdout.split("suggested learning rate ")[1].split()[0])
    assert 1e-5 < suggestion < 0.5 and out.stat().st_size > 5000
    status, _, err = cli("lr-find", "--out", tmp_path / "few.png", "--num-training", "12")
    assert status == 2 and "too few for a suggestion" in err
    assert not (tmp_path / "few.png").exists()


@pytest.mark.slow
def test_fit_with_automatic_learning_rate(cli, tmp_path: Path) -> None:
    import json

    run = tmp_path / "run"
    status, _, err = cli("fit", "--out", run, "optim.lr=auto", "trainer.max_epochs=2",
                         "wandb.mode=disabled")
    assert status == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["lr_found"] > 0 and (run / "lr_find.png").is_file()
    assert f"lr: {metrics['lr_found']}" in (run / "config.yaml").read_text()


@pytest.mark.slow
def test_norms_flag_logs_per_layer_weight_and_gradient_norms(fast_config, tmp_path: Path) -> None:
    from cnnlab.training.run import run

    plain = run(fast_config(), tmp_path / "a").history[-1]
    assert not any("norm/" in key for key in plain)
    row = run(fast_config("trainer.log_norms=true"), tmp_path / "b").history[-1]
    assert row["weight_norm/features.0.weight"] > 0 and row["grad_norm/features.0.weight"] > 0
    biases = [k for k in row if k.startswith("grad_norm/classifier") and k.endswith(".bias")]
    assert biases and "weight_norm/features.1.weight" in row  # biases and BN γ too


def test_lr_find_logs_its_plot_to_wandb(cli, tmp_path: Path, monkeypatch) -> None:
    from wandb_records import run_contents

    monkeypatch.delenv("WANDB_MODE", raising=False)
    status, _, err = cli("lr-find", "--out", tmp_path / "lr.png", "--num-training", "40")
    assert status == 0, err
    (path,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    contents = run_contents(path)
    assert contents["run"].job_type == "lr-find"
    assert contents["summary"]["lr_suggestion"] > 0
    assert any("lr_find/_type" in row for row in contents["history"])
