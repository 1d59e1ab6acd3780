"""Speed under load: the default digits fit, the default fit on CIFAR-shaped images and a quick
ablation with one CPU-bound competitor process running (on a core of its own when the machine
has several) against the same idle.

A fit's default thread count (``trainer.threads: 0``) follows the model's work per training
step, never the load (torch's sums, and so a fit's numbers, change with the thread count): the
digits net gets one thread and keeps its speed when another process takes a core; the
CIFAR-shaped net gets every core and slows down. Study workers (``--workers auto``) do count the
free cores.
"""

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from benchmarks.bench_fast import cifar_shaped
from benchmarks.common import Ratio
from cnnlab import api
from cnnlab.config import load_config
from cnnlab.data.sources import dataset_key
from cnnlab.training.run import run

QUICK = """
name: load
overrides: ["model.channels=[16,32]", trainer.max_epochs=3]
factors:
  model.norm: [batch, none]
seeds: 2
"""


def _fit(*overrides: str) -> float:
    cfg = load_config(overrides=["wandb.mode=disabled", "trainer.images=false", *overrides])
    return run(cfg, Path(tempfile.mkdtemp(prefix="cnnlab-bench-")) / "fit").number("fit_seconds")


def _cifar_fit() -> float:
    """The default fit's network and threads on 4,096 CIFAR-shaped images, 2 epochs."""
    cfg = load_config(overrides=["wandb.mode=disabled", "trainer.images=false",
                                 "trainer.max_epochs=2"])
    out = Path(tempfile.mkdtemp(prefix="cnnlab-bench-")) / "fit"
    return run(cfg, out, datasets={dataset_key(cfg.data): cifar_shaped()}).number("fit_seconds")


def _quick() -> float:
    root = Path(tempfile.mkdtemp(prefix="cnnlab-bench-"))
    (root / "load.yaml").write_text(QUICK)
    out = root / "out"
    start = time.perf_counter()
    api.ablate(root / "load.yaml", out=out, console=Console(quiet=True))
    return time.perf_counter() - start


def _loaded(measure: Callable[[], float]) -> float:
    """``measure`` while a busy-looping process keeps one core."""
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # running before cnnlab counts the free cores
        return measure()
    finally:
        competitor.kill()
        competitor.wait()


def bench() -> list[Ratio]:
    _fit(), _quick()  # warm-up
    out = []
    for name, measure in (("default digits fit (fit_seconds)", _fit),
                          ("default fit, CIFAR-shaped (fit_seconds)", _cifar_fit),
                          ("quick ablation, 4 trials, W&B offline (wall)", _quick)):
        idle, loaded = measure(), _loaded(measure)
        out.append(Ratio(f"under load / idle: {name}", loaded / idle, 1.5 if "digits" in name
                         else 2.5, f"one busy-looping competitor process: {loaded:.2f}s vs "
                         f"idle {idle:.2f}s", lower_is_better=True))
    return out
