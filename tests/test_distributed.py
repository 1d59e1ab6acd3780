"""Distributed training on CPU: global batch norm, per-rank shards, and a 2-process DDP fit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import FAST
from torch import nn

from cnnlab.data.datamodule import TensorBatches
from cnnlab.training.distributed import GlobalBatchNorm2d, GlobalBatchNormSync

WEIGHTS = torch.arange(4 * 75).view(4, 3, 5, 5).float() / 100  # an upstream gradient per sample


def _rank_forward(rank: int, port: int, x: torch.Tensor, state: dict, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    bn = GlobalBatchNorm2d(3)
    bn.load_state_dict(state)
    part = x[rank * 4 : (rank + 1) * 4].clone().requires_grad_(True)
    out = bn(part)
    (out * WEIGHTS).sum().backward()
    results[rank] = (out.detach(), part.grad, bn.running_mean.clone(), bn.running_var.clone(),
                     bn.weight.grad.clone())
    dist.destroy_process_group()


@pytest.mark.slow
def test_global_batch_norm_equals_batch_norm_on_the_concatenated_batch() -> None:
    from conftest import _free_port

    torch.manual_seed(0)
    x = torch.randn(8, 3, 5, 5) * 3 + 1
    reference = nn.BatchNorm2d(3)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 2)
        reference.bias.uniform_(-1, 1)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    results = mp.get_context("spawn").Manager().dict()
    mp.start_processes(_rank_forward, args=(_free_port(), x, state, results), nprocs=2,
                       start_method="spawn")
    full = x.clone().requires_grad_(True)
    out = reference(full)
    (out * torch.cat([WEIGHTS, WEIGHTS])).sum().backward()
    close = {"rtol": 1e-4, "atol": 1e-5}
    for rank in (0, 1):
        y, grad, mean, var, _ = results[rank]
        part = slice(rank * 4, (rank + 1) * 4)
        torch.testing.assert_close(y, out.detach()[part], **close)
        torch.testing.assert_close(grad, full.grad[part], **close)  # through the global statistics
        torch.testing.assert_close(mean, reference.running_mean, **close)
        torch.testing.assert_close(var, reference.running_var, **close)
    # each rank holds its share of the weight gradient; DDP sums them
    torch.testing.assert_close(results[0][4] + results[1][4], reference.weight.grad, **close)


def test_sync_plugin_swaps_batch_norms_and_back() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    model[1].running_mean.fill_(2.0)
    swapped = GlobalBatchNormSync().apply(model)
    assert [type(m) for m in swapped.modules()].count(GlobalBatchNorm2d) == 2
    assert swapped[1].running_mean.eq(2.0).all()
    reverted = GlobalBatchNormSync().revert(swapped)
    assert not any(isinstance(m, GlobalBatchNorm2d) for m in reverted.modules())
    assert reverted[1].running_mean.eq(2.0).all()


def test_ranks_get_disjoint_equal_shards() -> None:
    x, y = torch.arange(22).float().view(22, 1, 1, 1), torch.arange(22)
    train = [TensorBatches(x, y, 4, shuffle=True, seed=5, rank=r, world=2) for r in (0, 1)]
    seen = [torch.cat([yb for _, yb in t]) for t in train]
    assert len(train[0]) == len(train[1]) == 2  # 11 samples each → two full batches of 4
    assert not set(seen[0].tolist()) & set(seen[1].tolist())
    evaluation = [torch.cat([yb for _, yb in TensorBatches(x, y, 4, rank=r, world=2)]) for r in (0, 1)]
    assert sorted(torch.cat(evaluation).tolist()) == list(range(22))  # every sample scored once


@pytest.mark.slow
def test_two_process_ddp_fit_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "LOCAL_RANK", "RANK")}
    command = [sys.executable, "-m", "cnnlab.cli", "fit", "--out", str(out),
               *[o for o in FAST if not o.startswith("wandb.")], "wandb.mode=offline",
               "trainer.max_epochs=2", "trainer.accelerator=cpu", "trainer.devices=2",
               "trainer.strategy=ddp", "model.sync_batchnorm=true"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("cnnlab fit") == 1  # rank 0 prints, rank 1 stays quiet
    assert "GLOBAL_RANK: 1" in done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and not metrics["diverged"]
    assert metrics["test_acc"] > 0.5
    assert len(list(out.glob("wandb/offline-run-*/run-*.wandb"))) == 1  # one W&B run, rank 0's
    assert len(list(out.glob("checkpoints/*.ckpt"))) == 1


@pytest.mark.parametrize("command", ["ablate", "tune"])
def test_studies_refuse_several_devices_per_trial(cli, tmp_path: Path, command: str) -> None:
    spec = tmp_path / "s.yaml"
    body = ("factors: {model.norm: [batch]}" if command == "ablate" else
            "space: {optim.lr: {type: float, low: 0.001, high: 0.1}}")
    spec.write_text(f"name: s\noverrides: [trainer.devices=2]\n{body}\n")
    status, _, err = cli(command, spec, "--out", tmp_path / "out")
    assert status == 2 and "trainer.devices: got 2; allowed: 1 in a study" in err, err
    assert not (tmp_path / "out").exists()
