"""Fast paths and the worker thread policy.

- ``cnnlab fit``'s training loop at 32×32 (CIFAR-shaped images) with what ``auto`` picks on this
  machine (channels-last, and bf16 where the CPU has native bf16) against fp32 contiguous;
- two ablation workers with one torch thread each (cnnlab's policy) against two workers with
  torch's default thread count (one per core each, so the cores are oversubscribed).
"""

import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_ablation import SPEC, _throughput
from benchmarks.common import Ratio
from cnnlab.config import load_config
from cnnlab.cpus import usable_cpus
from cnnlab.data.sources import ImageData, dataset_key
from cnnlab.studies.ablations.run import check_arms, worker_main
from cnnlab.studies.ablations.spec import load_spec
from cnnlab.studies.ablations.store import AblationStore
from cnnlab.studies.engine.storage import open_storage
from cnnlab.studies.engine.workers import run_workers
from cnnlab.training.fast import resolve
from cnnlab.training.run import run


def cifar_shaped(n: int = 4096, seed: int = 0) -> ImageData:
    """Learnable 3×32×32 images: a bright band whose row depends on the label, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 60, (n, 3, 32, 32), dtype=np.uint8)
    for i, label in enumerate(y):
        x[i, :, 3 * label : 3 * label + 2] = 250
    return ImageData(torch.from_numpy(x).float() / 255, torch.from_numpy(y), [str(c) for c in range(10)])


def _fit_seconds(data: ImageData, *overrides: str) -> float:
    cfg = load_config(overrides=["model.channels=[32,64,128]", "data.batch_size=128",
                                 "trainer.max_epochs=2", "wandb.mode=disabled",
                                 "trainer.images=false", *overrides])
    out = Path(tempfile.mkdtemp(prefix="cnnlab-bench-"))
    return run(cfg, out, datasets={dataset_key(cfg.data): data}).metrics["fit_seconds"]


def _two_workers(threads: int) -> float:
    root = Path(tempfile.mkdtemp(prefix="cnnlab-bench-"))
    # 8 trials of 3 epochs: oversubscribed workers are so slow that more would dominate make bench
    (root / "bench.yaml").write_text(SPEC.format(seeds=2).replace("max_epochs=15", "max_epochs=3"))
    url, spec = str(root / "study.journal"), load_spec(root / "bench.yaml")
    store = AblationStore.open(spec, False, open_storage(url), check_arms(spec, False))
    store.reconcile(spec, False)
    run_workers(worker_main, [([(url, store.name, str(root / "out"))], threads)] * 2,
                lambda: None, done=lambda: not store.unfinished())
    return _throughput([t for t in store.trials() if t.value is not None])


def bench(repeats: int = 3) -> list[Ratio]:
    data = cifar_shaped()
    plain = ("trainer.precision=32-true", "model.channels_last=false")
    _fit_seconds(data, "trainer.max_epochs=1")  # warm-up
    _fit_seconds(data, "trainer.max_epochs=1", *plain)
    fast, slow = [], []
    for _ in range(repeats):  # interleaved, so drift hits both alike
        fast.append(_fit_seconds(data))
        slow.append(_fit_seconds(data, *plain))
    fast_s, slow_s = sorted(fast)[repeats // 2], sorted(slow)[repeats // 2]
    chosen = resolve(load_config())
    one, default = _two_workers(1), _two_workers(usable_cpus())  # torch's default: 1 per core
    return [
        Ratio("fast path / fp32 contiguous, 32×32 training", slow_s / fast_s, 1.5,
              f"auto = {chosen.precision}, channels_last={chosen.channels_last}: {fast_s:.2f}s vs "
              f"{slow_s:.2f}s for 2 epochs of 4,096 3×32×32 images (target for a CPU with bf16)"),
        Ratio("2 workers: 1 thread each / torch default threads", one / default, 1.1,
              f"trials/s: {one:.2f} vs {default:.2f} ({usable_cpus()} threads each by "
              "default on this machine)"),
    ]
