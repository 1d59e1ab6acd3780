"""Speed under load: the default digits fit and a quick ablation with one CPU-bound competitor
process running (on a core of its own when the machine has several) against the same idle.

A fit's default thread count (``trainer.threads: 0``) is one per core this process may use,
whatever the load: torch's sums, and so the fit's numbers, change with the thread count, so it
may not follow the load. That default collapses when another process takes a core; the row
says by how much, and what ``trainer.threads=1`` (what study trials use) does under the same
load. Study workers (``--workers auto``) do count the free cores.
"""

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from benchmarks.common import Ratio
from cnnlab import api
from cnnlab.config import load_config
from cnnlab.cpus import usable_cpus
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
    one_thread = _loaded(lambda: _fit("trainer.threads=1"))
    out = []
    for name, measure, note in (
            ("default digits fit (fit_seconds)", _fit,
             f" ({usable_cpus()} threads, one per core, the same idle or loaded); "
             f"trainer.threads=1 under the same load: {one_thread:.2f}s"),
            ("quick ablation, 4 trials, W&B offline (wall)", _quick, "")):
        idle, loaded = measure(), _loaded(measure)
        out.append(Ratio(f"under load / idle: {name}", loaded / idle, 2.5,
                         f"one busy-looping competitor process: {loaded:.2f}s vs idle "
                         f"{idle:.2f}s{note}", lower_is_better=True))
    return out
