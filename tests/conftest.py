"""Shared fixtures: small, fast configs and a CLI runner that captures exit status and output."""

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cnnlab.cli import main
from cnnlab.config import ExperimentConfig, load_config

os.environ.setdefault("WANDB_MODE", "disabled")

FAST = ["trainer.max_epochs=1", "wandb.mode=disabled", "model.channels=[8,16]", "data.batch_size=32",
        "optim.scheduler=none", "optim.lr=0.01",
        "model.hidden_units=[32]"]


@pytest.fixture
def fast_config() -> Callable[..., ExperimentConfig]:
    """A 1-epoch digits config with W&B off; extra overrides win."""
    return lambda *overrides: load_config(overrides=[*FAST, *overrides])


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run ``cnnlab ARGS`` in-process; returns (exit status, stdout, stderr)."""

    def run(*args: str | Path) -> tuple[int, str, str]:
        status = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return status, out, err

    return run
