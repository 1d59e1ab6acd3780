"""`make bench-gpu`: the CIFAR-10 fast preset on the GPU this machine has.

Prints the epoch time on 50k training images, the Lightning path / plain loop ratio on the
preset, and the trials/s of an ablation with 1, 2 and 4 worker processes sharing the GPU. Needs
no download: synthetic CIFAR-shaped images (uniform noise, random labels: timing only) unless
``--data-root`` holds ``cifar-10-batches-py``. ``--device cpu --images N`` runs the same code on
a CPU with a small dataset (what the tests do).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from benchmarks.bench_ablation import _throughput
from benchmarks.bench_fit import plain_loop
from cnnlab import api
from cnnlab.config import ExperimentConfig, load_config
from cnnlab.data.datamodule import DataModule
from cnnlab.studies.engine.storage import default_url, open_storage
from cnnlab.studies.engine.store import Store
from cnnlab.training.run import run

PRESET = "configs/presets/cifar10_fast.yaml"
CIFAR_TRAIN = 50_000


def data_overrides(root: Path | None, images: int, scratch: Path) -> tuple[list[str], str]:
    """Overrides that point the preset at real CIFAR-10 under ``root``, or at ``images`` synthetic
    training images (plus a test split) written to ``scratch``; and what was used, in words."""
    if root is not None and (root / "cifar-10-batches-py").is_dir():
        return [f"data.root={root}"], f"CIFAR-10 from {root}"
    test_fraction = load_config([PRESET]).data.test_fraction
    total = round(images / (1 - test_fraction))  # the training portion is ``images``
    rng = np.random.default_rng(0)
    path = scratch / "synthetic.npz"
    np.savez(path, x=rng.integers(0, 256, (total, 32, 32, 3), dtype=np.uint8),
             y=np.arange(total) % 10)
    # noise with random labels: a lower peak rate keeps the loss finite (timing only)
    return ["data.name=npz", f"data.root={path}", "optim.lr=0.02"], \
        f"{images:,} synthetic 3×32×32 images"


def preset(device: str, extra: list[str], epochs: int) -> ExperimentConfig:
    accelerator = "gpu" if device == "cuda" else "cpu"
    return load_config([PRESET], [*extra, f"trainer.accelerator={accelerator}",
                                  f"trainer.max_epochs={epochs}", "wandb.mode=disabled",
                                  "trainer.images=false"])


def epoch_seconds(device: str, extra: list[str], scratch: Path) -> tuple[float, float, float]:
    """(seconds per epoch after the first, plain loop seconds, cnnlab fit seconds) over 3 epochs."""
    fits = {}
    for epochs in (1, 3):
        result = run(preset(device, extra, epochs), scratch / f"fit{epochs}")
        if result.metrics["diverged"]:
            raise SystemExit(f"bench-gpu: the {epochs}-epoch fit diverged; timings would be short")
        fits[epochs] = result.metrics["fit_seconds"]
    cfg = preset(device, extra, 3)
    start = time.perf_counter()
    data = DataModule(cfg.data, cfg.seed)
    data.setup("fit")
    plain_loop(cfg, data)
    return (fits[3] - fits[1]) / 2, time.perf_counter() - start, fits[3]


SPEC = """
name: gpu-workers
configs: [{preset}]
overrides: {overrides}
factors:
  optim.lr: [0.01, 0.02]
seeds: {seeds}
"""


def trials_per_second(device: str, extra: list[str], workers: int, scratch: Path) -> float:
    """Steady-state trials/s of a 1-epoch ablation of the preset run by ``workers`` processes
    (each worker's first trial, with its start-up, left out; W&B offline as users run it)."""
    accelerator = "gpu" if device == "cuda" else "cpu"
    overrides = [*extra, f"trainer.accelerator={accelerator}", "trainer.max_epochs=1"]
    root = scratch / f"workers{workers}"
    root.mkdir()
    (root / "spec.yaml").write_text(SPEC.format(preset=Path(PRESET).resolve(),
                                                overrides=overrides, seeds=max(2, 2 * workers)))
    out = root / "out"
    api.ablate(root / "spec.yaml", workers=workers, out=out, console=Console(quiet=True))
    trials = Store.load(open_storage(default_url(out), readonly=True), "gpu-workers").get_trials()
    return _throughput([t for t in trials if "fit_seconds" in t.user_attrs])


def bench(device: str, images: int, data_root: Path | None, workers: tuple[int, ...],
          overrides: tuple[str, ...] = ()) -> list[str]:
    """The report's lines; ``overrides`` change the preset (a variant to time). Its data, runs
    and studies go to a temporary folder removed at the end."""
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-gpu-") as folder:
        scratch = Path(folder)
        extra, source = data_overrides(data_root, images, scratch)
        extra += overrides
        source += "".join(f", {o}" for o in overrides)
        epoch, plain, fit = epoch_seconds(device, extra, scratch)
        rates = {w: trials_per_second(device, extra, w, scratch) for w in workers}
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    lines = [f"{name}, {PRESET}, {source}",
             f"epoch time: {epoch:.2f} s (epochs 2–3 of a 3-epoch fit)",
             f"Lightning path / plain loop: {plain / fit:.2f} (3 epochs: plain {plain:.2f} s, "
             f"cnnlab fit {fit:.2f} s; target ≥ 0.90)"]
    lines.append("ablation trials/s (1-epoch trials): " + ", ".join(
        f"{w} worker{'s' * (w > 1)} {r:.3f} ({r / rates[workers[0]]:.2f}×)"
        for w, r in rates.items()))
    return lines


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks --gpu", description=__doc__)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: the same code on a small dataset (default: %(default)s)")
    parser.add_argument("--images", type=int, default=CIFAR_TRAIN,
                        help="synthetic training images (default: %(default)s)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="a folder holding cifar-10-batches-py (default: synthetic data)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4],
                        help="worker counts to compare (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="changes to the preset, as for cnnlab fit")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench-gpu: no CUDA GPU on this machine; allowed: a machine with one, or "
              "--device cpu for a small run of the same code", file=sys.stderr)
        raise SystemExit(2)
    for line in bench(args.device, args.images, args.data_root, tuple(args.workers),
                      tuple(args.overrides)):
        print(line)
