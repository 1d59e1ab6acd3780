"""The Lightning Trainer with defaults that keep small runs fast."""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from lightning.fabric.plugins.environments import (
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger

from cnnlab.config import TrainerConfig
from cnnlab.errors import CnnlabError
from cnnlab.metrics import VAL_ACC
from cnnlab.training.distributed import layer_sync
from cnnlab.training.fast import device_type


def _skip_missing_nvml() -> None:
    """Lightning's import asks torch to check for CUDA through NVML (fork-safe). Where NVML
    does not load (no NVIDIA driver: CPU machines), torch then tries to load it on every CUDA
    check, and Adam's every step makes one, before it falls back to the CUDA runtime's own
    check anyway: 0.04-0.3 ms a step (1-7 % of a digits step). Without NVML, ask the runtime
    directly; with it, nothing changes."""
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") != "1":
        return
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        del os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]


DEVICES: dict[str, Callable[[], bool]] = {"cuda": torch.cuda.is_available,
                                           "mps": torch.backends.mps.is_available}
CLUSTERS = (SLURMEnvironment, TorchElasticEnvironment, LSFEnvironment, MPIEnvironment)


def check_machine(cfg: TrainerConfig) -> None:
    """What the config asks of the machine is there, before Lightning waits for it: a GPU for
    ``accelerator=gpu``, and a cluster launcher for ``num_nodes`` > 1 (on one machine the fit
    waited for node 2 for good, deaf to SIGTERM)."""
    device = device_type(cfg.accelerator)
    if device in DEVICES and not DEVICES[device]():
        raise CnnlabError(f"trainer.accelerator: got {cfg.accelerator!r}, but this machine has no "
                          f"{device} device; allowed: auto or cpu here")
    launched = "NODE_RANK" in os.environ or any(env.detect() for env in CLUSTERS)
    if cfg.num_nodes > 1 and not launched:
        raise CnnlabError(f"trainer.num_nodes: got {cfg.num_nodes}, but no cluster launcher "
                          "started this process (SLURM, torchrun, LSF or MPI; or "
                          "NODE_RANK and MASTER_ADDR set); allowed: 1, or start cnnlab on every "
                          "node through one")


BEST = "best"
EPOCH_LOGS_ONLY = 2**31 - 1  # cnnlab logs per epoch; per-step log bookkeeping cost 4% of a fit


def build_trainer(
    cfg: TrainerConfig, out: Path, loggers: list[Logger], validate: bool = True,
    callbacks: Sequence[Callback] = (), sync_batchnorm: bool = False,
) -> L.Trainer:
    """No sanity steps, no model summary, only the best checkpoint (its weights and
    hyperparameters: no run resumes mid-fit, so no optimizer state), a progress bar on a TTY.

    Without validation (a refit on all training data) the checkpoint is the last epoch's.
    ``trainer.devices`` / ``num_nodes`` / ``strategy`` pass through to Lightning (see
    ``distributed``).
    """
    _skip_missing_nvml()
    check_machine(cfg)
    checkpoint = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename=BEST,
        monitor=VAL_ACC if validate else None,
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
        save_weights_only=True,
    )
    return L.Trainer(
        max_epochs=cfg.max_epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        plugins=list[Any](layer_sync(sync_batchnorm, cfg.accelerator)),
        precision=cast(Any, cfg.precision),  # one of CHOICES["trainer.precision"], checked by config.validate
        deterministic=cfg.deterministic,
        logger=loggers or False,
        callbacks=[checkpoint, *callbacks],
        enable_progress_bar=cfg.progress_bar and sys.stderr.isatty(),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=None if validate else 0,
        log_every_n_steps=EPOCH_LOGS_ONLY,
        default_root_dir=out,
    )
