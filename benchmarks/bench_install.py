"""The installed size: how much of the environment torch's CUDA build (its nvidia libraries and
triton) takes, on a machine that has no NVIDIA GPU to use it (``make install`` takes PyTorch's
CPU wheels there when their index answers)."""

import os
import shutil
import sysconfig
from pathlib import Path

from benchmarks.common import Ratio

CUDA_PARTS = ("nvidia", "triton")  # what a CPU-only torch install leaves out


def _size(path: Path) -> int:
    if not path.is_dir():
        return 0
    return sum(os.lstat(os.path.join(root, name)).st_size
               for root, _, names in os.walk(path) for name in names)


def bench() -> list[Ratio]:
    site = Path(sysconfig.get_paths()["purelib"])
    total = _size(site)
    cuda = sum(_size(site / part) for part in CUDA_PARTS)
    torch = _size(site / "torch")
    gpu = shutil.which("nvidia-smi") is not None
    detail = (f"site-packages {total / 1e9:.2f} GB: torch {torch / 1e9:.2f} GB, nvidia + triton "
              f"{cuda / 1e9:.2f} GB; {'an NVIDIA GPU' if gpu else 'no NVIDIA GPU'} here "
              "(a CPU-only venv measured 1.8 GB)")
    return [Ratio("install: CUDA libraries / site-packages" + ("" if not gpu else " (GPU machine)"),
                  cuda / total, 1.0 if gpu else 0.0, detail, lower_is_better=True)]
