"""What the project controls in a fit, measured against what it builds on:

- ``cnnlab fit``'s Lightning path (its metrics, hooks, history and W&B logging) against a bare
  ``LightningModule`` of the same network, optimizer, schedule and batches on the same Trainer
  settings: the cost of cnnlab's own code (digits, the default config);
- that bare Lightning module against a plain PyTorch loop on the CIFAR-shaped preset: the
  Trainer's own per-step cost, which cnnlab does not control (on the digits' tiny steps it is a
  large share of each step, on 32×32 images a small one).
"""

import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.bench_fast import cifar_shaped
from benchmarks.common import Ratio, median_times
from cnnlab.config import ExperimentConfig, load_config
from cnnlab.data.datamodule import DataModule
from cnnlab.data.sources import dataset_key
from cnnlab.models.convnet import ConvNet
from cnnlab.training.fast import device_type, prepare, resolve
from cnnlab.training.optim import OPTIMIZERS, SCHEDULERS
from cnnlab.training.run import run

CIFAR_PRESET = ("model.channels=[32,64,128]", "data.batch_size=128", "trainer.max_epochs=2",
                "trainer.images=false")


def plain_loop(cfg: ExperimentConfig, data: DataModule) -> float:
    """Train and validate every epoch by hand, with the same fast path (device, layout,
    precision) and optimizer as cnnlab's; returns the last validation accuracy."""
    torch.manual_seed(cfg.seed)
    fast = resolve(cfg)
    device = torch.device(device_type(cfg.trainer.accelerator))
    model = ConvNet(cfg.model, data.input_shape, data.num_classes).to(device)
    prepare(model, fast, compile_model=False)
    data.to_device(device, fast.channels_last)
    bf16 = torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast.precision == "bf16-mixed")
    optimizer = OPTIMIZERS[cfg.optim.name](model.parameters(), cfg.optim)
    batches = data.train_dataloader()
    factory = SCHEDULERS[cfg.optim.scheduler]
    scheduler = factory(optimizer, cfg.optim, cfg.trainer.max_epochs * len(batches)) if factory else None
    correct = 0
    assert data.val is not None
    for _ in range(cfg.trainer.max_epochs):
        model.train()
        for x, y in batches:
            optimizer.zero_grad()
            with bf16:
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        model.eval()
        with torch.no_grad(), bf16:
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in data.val_dataloader())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return correct / len(data.val[1])


class Bare(L.LightningModule):
    """The same network, optimizer and schedule with nothing of cnnlab's: no metrics, history,
    regularizer or logging; validation counts correct predictions and keeps nothing."""

    def __init__(self, cfg: ExperimentConfig, model: torch.nn.Module) -> None:
        super().__init__()
        self.cfg, self.model = cfg, model

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return (self.model(x).argmax(1) == y).sum()

    def configure_optimizers(self) -> dict:
        optimizer = OPTIMIZERS[self.cfg.optim.name](self.parameters(), self.cfg.optim)
        factory = SCHEDULERS[self.cfg.optim.scheduler]
        if factory is None:
            return {"optimizer": optimizer}
        steps = int(self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {
            "scheduler": factory(optimizer, self.cfg.optim, steps), "interval": "step"}}


def bare_fit(cfg: ExperimentConfig, data: DataModule) -> float:
    """Seconds of ``trainer.fit`` for ``Bare`` (the Trainer settings cnnlab's fit uses, less
    its logger, checkpoint and progress bar)."""
    torch.manual_seed(cfg.seed)
    fast = resolve(cfg)
    model = ConvNet(cfg.model, data.input_shape, data.num_classes)
    prepare(model, fast, compile_model=False)
    trainer = L.Trainer(max_epochs=cfg.trainer.max_epochs, accelerator=cfg.trainer.accelerator,
                        devices=1, precision=fast.precision, logger=False,  # type: ignore[arg-type]
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    data.to_device(trainer.strategy.root_device, fast.channels_last)
    start = time.perf_counter()
    trainer.fit(Bare(cfg, model), datamodule=data)
    return time.perf_counter() - start


def _data(cfg: ExperimentConfig, datasets: dict | None = None) -> DataModule:
    data = DataModule(cfg.data, cfg.seed, data=(datasets or {}).get(dataset_key(cfg.data)))
    data.setup("fit")
    return data


def _plain_seconds(cfg: ExperimentConfig, data: DataModule) -> float:
    start = time.perf_counter()
    plain_loop(cfg, data)
    return time.perf_counter() - start


def bench(repeats: int = 5) -> list[Ratio]:
    cfg = load_config(overrides=["wandb.mode=offline"])
    data = _data(cfg)
    fit_seconds: list[float] = []
    bare_seconds: list[float] = []

    def cnnlab_fit() -> None:
        result = run(cfg, Path(tempfile.mkdtemp(prefix="cnnlab-bench-")))
        fit_seconds.append(result.number("fit_seconds"))

    warm = load_config(overrides=["trainer.max_epochs=1", "wandb.mode=disabled"])
    bare_fit(warm, data)
    run(warm, Path(tempfile.mkdtemp(prefix="cnnlab-bench-")))
    median_times({"bare": lambda: bare_seconds.append(bare_fit(cfg, data)), "cnnlab": cnnlab_fit},
                 repeats)
    fit, bare = sorted(fit_seconds)[repeats // 2], sorted(bare_seconds)[repeats // 2]

    cifar = {dataset_key(load_config().data): cifar_shaped()}
    big = load_config(overrides=list(CIFAR_PRESET))
    plain_loop(big, _data(big, cifar))  # warm-up
    seconds: dict[str, list[float]] = {"plain": [], "lightning": []}
    for _ in range(3):  # interleaved; each times its training and validation only
        seconds["plain"].append(_plain_seconds(big, _data(big, cifar)))
        seconds["lightning"].append(bare_fit(big, _data(big, cifar)))
    times = {k: statistics.median(v) for k, v in seconds.items()}
    return [
        Ratio("fit path / bare LightningModule, digits", bare / fit, 0.90,
              f"default config, {cfg.trainer.max_epochs} epochs, W&B offline: trainer.fit of a "
              f"bare module {bare:.2f}s, of cnnlab's {fit:.2f}s (median of {repeats})"),
        Ratio("bare Lightning / plain loop, CIFAR-shaped", times["plain"] / times["lightning"],
              0.95, f"4,096 3×32×32 images, channels 32-64-128, batch 128, 2 epochs: plain loop "
              f"{times['plain']:.2f}s, trainer.fit {times['lightning']:.2f}s (median of 3)"),
    ]
