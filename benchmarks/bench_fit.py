"""`cnnlab fit`'s training path vs a plain PyTorch loop: same model, batches, epochs and data."""

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import Ratio, median_times
from cnnlab.config import ExperimentConfig, load_config
from cnnlab.data.datamodule import DataModule
from cnnlab.models.convnet import ConvNet
from cnnlab.training.fast import device_type, prepare, resolve
from cnnlab.training.optim import OPTIMIZERS, SCHEDULERS
from cnnlab.training.run import run


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
    scheduler = SCHEDULERS[cfg.optim.scheduler](
        optimizer, cfg.optim, cfg.trainer.max_epochs * len(batches)
    )
    correct = 0
    for _ in range(cfg.trainer.max_epochs):
        model.train()
        for x, y in batches:
            optimizer.zero_grad()
            with bf16:
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        with torch.no_grad(), bf16:
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in data.val_dataloader())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return correct / len(data.val[1])


def bench(repeats: int = 3) -> list[Ratio]:
    cfg = load_config(overrides=["wandb.mode=offline"])
    data = DataModule(cfg.data, cfg.seed)
    data.setup("fit")
    fit_seconds: list[float] = []

    def cnnlab_fit() -> None:
        result = run(cfg, Path(tempfile.mkdtemp(prefix="cnnlab-bench-")))
        fit_seconds.append(result.metrics["fit_seconds"])

    def plain() -> None:
        plain_loop(cfg, data)

    plain_loop(load_config(overrides=["trainer.max_epochs=1"]), data)  # warm-up
    run(load_config(overrides=["trainer.max_epochs=1", "wandb.mode=disabled"]),
        Path(tempfile.mkdtemp(prefix="cnnlab-bench-")))
    medians = median_times({"plain": plain, "cnnlab": cnnlab_fit}, repeats)
    fit = sorted(fit_seconds)[len(fit_seconds) // 2]
    return [
        Ratio(
            "fit path / plain loop throughput",
            medians["plain"] / fit,
            0.90,
            f"digits, {cfg.trainer.max_epochs} epochs, W&B offline: plain {medians['plain']:.2f}s, "
            f"trainer.fit {fit:.2f}s (whole run incl. test+W&B {medians['cnnlab']:.2f}s)",
        )
    ]
