"""Shared fixtures: small, fast configs and a CLI runner that captures exit status and output."""

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cnnlab.cli import main
from cnnlab.config import ExperimentConfig, load_config

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("CNNLAB_WORKERS", "1")  # in-process studies; tests of workers say how many

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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster on a loopback port (initdb / pg_ctl as the postgres user)."""
    import glob
    import shutil
    import subprocess
    import tempfile

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert bins, "PostgreSQL is not installed: .ci/run installs it (apt-get install postgresql)"
    bindir = Path(bins[-1]).parent
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="cnnlab-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = _free_port()
    subprocess.run([*as_postgres, bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust",
                    "--no-sync"], check=True, capture_output=True)
    subprocess.run([*as_postgres, bindir / "pg_ctl", "-D", data, "-w", "-l", data / "log",
                    "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)
