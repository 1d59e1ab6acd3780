"""The one run path: every norm × dropout × regularizer trains, runs are reproducible, files land."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cnnlab.cpus import usable_cpus
from cnnlab.training.run import run

NORMS = ["batch", "layer", "instance", "group", "none"]
REGS = ["none", "l1", "l2", "elastic"]


# One factor at a time (the full 5 × 2 × 4 grid took half of the suite and showed nothing
# these nine cases do not): every norm with dropout and an L2 penalty, every regularizer
# with batch norm and no dropout.
FACTORS = ([(norm, 0.2, "l2") for norm in NORMS]
           + [("batch", 0.0, reg) for reg in REGS if reg != "l2"] + [("none", 0.0, "none")])


@pytest.mark.parametrize(("norm", "dropout", "reg"), FACTORS)
def test_every_norm_dropout_and_regularizer_trains(fast_config, tmp_path: Path, norm: str,
                                                   dropout: float, reg: str) -> None:
    cfg = fast_config("trainer.max_epochs=2", f"model.norm={norm}", f"model.dropout={dropout}",
                      f"model.spatial_dropout={dropout / 2}", f"reg.kind={reg}", "reg.strength=1e-4")
    result = run(cfg, tmp_path)
    first, last = result.history
    assert last["train/loss"] < first["train/loss"]
    assert 0.2 < result.metrics["test_acc"] <= 1.0  # ten classes: twice chance or better
    assert result.metrics["epochs"] == 2
    assert (last["train/reg_loss"] > 0) == (reg != "none")


@pytest.mark.parametrize(
    "optim",
    [["optim.name=sgd", "optim.nesterov=true", "optim.lr=0.05", "optim.scheduler=cosine"],
     ["optim.name=adamw", "optim.weight_decay=0.01", "optim.scheduler=none"],
     ["optim.name=adam", "model.pool=avg", "model.init=xavier"],
     ["model.pool=none", "model.init=default", "model.stride=2"]],
)
def test_optimizers_schedules_pools_and_inits_train(fast_config, tmp_path: Path,
                                                   optim: list[str]) -> None:
    result = run(fast_config("trainer.max_epochs=2", *optim), tmp_path)
    assert result.metrics["test_acc"] > 0.3
    assert [row["epoch"] for row in result.history] == [0, 1]


def test_onecycle_schedule_follows_the_run(fast_config, tmp_path: Path) -> None:
    result = run(fast_config("trainer.max_epochs=5", "optim.scheduler=onecycle"), tmp_path)
    lrs = [row["lr"] for row in result.history]
    assert lrs[0] < lrs[1] and lrs[-1] < 1e-5  # warm-up, then annealed to ~0 by the end


def test_same_seed_gives_the_same_metrics(fast_config, tmp_path: Path) -> None:
    cfg = fast_config("trainer.max_epochs=2")
    first = run(cfg, tmp_path / "a").metrics
    second = run(cfg, tmp_path / "b").metrics
    for timing in ("fit_seconds",):
        first.pop(timing), second.pop(timing)
    assert first == second
    third = run(fast_config("trainer.max_epochs=2", "seed=1"), tmp_path / "c").metrics
    assert third["train_loss"] != first["train_loss"]


def test_fold_run_never_touches_the_test_split(fast_config, tmp_path: Path) -> None:
    result = run(fast_config(), tmp_path, fold=(0, 3))
    assert "test_acc" not in result.metrics and result.metrics["val_acc"] > 0.3


@pytest.mark.slow
def test_default_config_learns_digits(tmp_path: Path) -> None:
    from cnnlab.config import load_config

    result = run(load_config(overrides=["wandb.mode=disabled"]), tmp_path)
    assert result.metrics["test_acc"] >= 0.97


def test_fit_cli_writes_the_run_directory(cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    status, stdout, _ = cli("fit", "--out", out, "trainer.max_epochs=2", "wandb.mode=disabled")
    assert status == 0 and "test_acc" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test_acc", "val_acc", "train_loss", "fit_seconds", "epochs"} <= metrics.keys()
    assert "norm: batch" in (out / "config.yaml").read_text()
    assert (out / "history.csv").read_text().splitlines()[0].startswith("epoch,")
    assert len((out / "history.csv").read_text().splitlines()) == 3
    assert (out / "checkpoints" / "best.ckpt").is_file()
    status, _, err = cli("fit", "--out", out, "trainer.max_epochs=1")
    assert status == 2 and "already holds a finished run" in err
    assert json.loads((out / "metrics.json").read_text()) == metrics  # nothing lost
    assert cli("fit", "--out", out, "--overwrite", "trainer.max_epochs=1",
               "wandb.mode=disabled")[0] == 0


def test_print_config_shows_the_resolved_values(cli, tmp_path: Path) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text("model:\n  norm: layer\n  channels: [4, 4]\n")
    status, out, _ = cli("fit", "--print-config", "--config", extra, "model.channels=[16]")
    assert status == 0
    assert "norm: layer" in out and "- 16" in out and "- 4" not in out


@pytest.mark.slow
def test_threads_0_is_recorded_and_the_same_idle_and_under_load(cli, tmp_path: Path) -> None:
    """``trainer.threads: 0`` was "the cores free at the start": one busy core elsewhere changed
    the thread count, torch's sums and so the fit's accuracy, and config.yaml said only 0."""
    args = ["trainer.max_epochs=2", "model.channels=[8]", "model.hidden_units=[16]"]
    assert cli("fit", "--out", str(tmp_path / "idle"), *args)[0] == 0
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(usable_cpus())]
    try:
        time.sleep(0.5)
        assert cli("fit", "--out", str(tmp_path / "busy"), *args)[0] == 0
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    idle, busy = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("idle", "busy"))
    keys = ("test_acc", "val_acc", "train_loss", "test_loss")
    assert {k: idle[k] for k in keys} == {k: busy[k] for k in keys}
    recorded = yaml.safe_load((tmp_path / "busy" / "config.yaml").read_text())
    assert recorded["trainer"]["threads"] == 1  # a digits net's work per step: one thread


def test_the_summary_shared_by_trials_tells_architectures_apart() -> None:
    """The per-layer rows behind the memory check and the thread count are summarised once per
    architecture: the seeds of an arm share them, another width, shape or class count not."""
    from cnnlab.config import load_config
    from cnnlab.training.build import meta_rows

    digits = load_config()
    rows = meta_rows(digits, (1, 8, 8), 10)
    assert meta_rows(load_config(overrides=["seed=7"]), (1, 8, 8), 10) is rows
    params = sum(r.params for r in rows)
    wider = load_config(overrides=["model.hidden_units=[300]"])
    assert sum(r.params for r in meta_rows(wider, (1, 8, 8), 10)) > params
    assert sum(r.params for r in meta_rows(digits, (3, 8, 8), 10)) > params
    assert sum(r.params for r in meta_rows(digits, (1, 8, 8), 26)) > params
    assert meta_rows(digits, (1, 16, 16), 10)[0].shape != rows[0].shape


def test_threads_0_follows_the_models_work_never_the_load() -> None:
    """One thread per 5·10⁸ multiply-adds of a training step, up to the cores: a digits net
    gets one (the default fit collapsed 2 s → 166 s when another process took a core), a
    CIFAR-sized one every core."""
    from cnnlab.config import load_config
    from cnnlab.training.build import step_macs
    from cnnlab.training.fast import threads_for

    digits = load_config()
    cifar = load_config(["cifar10_fast"])
    assert step_macs(digits, (1, 8, 8), 10) == 3 * 64 * 347_392
    assert threads_for(step_macs(digits, (1, 8, 8), 10)) == 1
    assert threads_for(step_macs(cifar, (3, 32, 32), 10)) == usable_cpus()
    assert threads_for(0) == 1 and threads_for(1e15) == usable_cpus()
    import torch

    from cnnlab.data.sources import ImageData, dataset_key, shape_of

    given = ImageData(torch.zeros(4, 3, 32, 32), torch.arange(4) % 2, ["a", "b"])
    assert shape_of(digits.data, {}) == ((1, 8, 8), 10)  # known: no file read
    assert shape_of(digits.data, {dataset_key(digits.data): given}) == ((3, 32, 32), 2)
