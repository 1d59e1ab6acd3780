"""Shared fixtures: small, fast configs and a CLI runner that captures exit status and output."""

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A throwaway PostgreSQL cluster on a loopback port (initdb / pg_ctl as the postgres user)."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        assert bins, "PostgreSQL is not installed: .ci/run installs it (apt-get install postgresql)"
        self.bindir = Path(bins[-1]).parent
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.data = Path(tempfile.mkdtemp(prefix="cnnlab-pg-", dir="/tmp"))
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres", "postgres")
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        subprocess.run([*self.as_postgres, self.bindir / "initdb", "-D", self.data, "-U",
                        "postgres", "--auth=trust", "--no-sync"], check=True, capture_output=True)

    def _ctl(self, *args: str | Path) -> None:
        subprocess.run([*self.as_postgres, self.bindir / "pg_ctl", "-D", self.data, *args],
                       check=True, capture_output=True)

    def start(self) -> None:
        self._ctl("-w", "-l", self.data / "log", "-o", f"-p {self.port} -k {self.data} "
                  "-c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self._ctl("-m", "immediate", "stop")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    cluster = Postgres()
    cluster.start()
    try:
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster.stop()
        shutil.rmtree(cluster.data, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres: Postgres) -> str:
    return postgres.url
