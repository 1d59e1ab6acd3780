"""The LightningModule: cross-entropy plus a weight penalty, with torchmetrics per split."""

from __future__ import annotations

import math
from typing import Any, cast

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from cnnlab.config import ExperimentConfig, recorded, to_dict
from cnnlab.data.datamodule import DataModule
from cnnlab.metrics import TRAIN_LOSS, logged
from cnnlab.models.convnet import ConvNet
from cnnlab.regularization import Regularizer
from cnnlab.training.optim import OPTIMIZERS, SCHEDULERS

SPLITS = ("train", "val", "test")


class Classifier(L.LightningModule):
    """Trains a ConvNet on cross-entropy + regularizer; logs loss, reg loss and accuracy per epoch.

    Its hyperparameters are the run's whole config plus what the data told it (input shape,
    class names, the training split's per-channel mean and std): every checkpoint rebuilds
    itself with ``Classifier.load_from_checkpoint(path)``, and knows how to normalise raw pixels
    (``cnnlab.load``). ``model`` passes in a network built (and seeded) by ``build``; without it
    the network is built from the config (loading a checkpoint).

    Each step only keeps its predictions and losses (no host sync, no metric bookkeeping); the
    torchmetrics objects consume a whole epoch at once, which keeps small models fast, and
    sync across processes in distributed training, so every rank sees the same epoch metrics.
    ``history`` keeps one row of metrics per epoch. Training stops as *diverged* when an
    epoch's cross-entropy is NaN, infinite or above ten times that of a uniform guess.
    """

    def __init__(
        self, config: dict[str, Any], input_shape: tuple[int, int, int], classes: list[str],
        mean: list[float], std: list[float], model: nn.Module | None = None,
        cfg: ExperimentConfig | None = None,
    ) -> None:
        super().__init__()
        # W&B has the config already; ``cfg`` is ``config`` parsed, when the caller has it (a
        # fit: rebuilding it from the dict was a tenth of a small trial's time outside its fit)
        self.save_hyperparameters(ignore=["model", "cfg"], logger=False)
        cfg = cfg if cfg is not None else recorded(config)
        num_classes = len(classes)
        self.model = model if model is not None else ConvNet(cfg.model, input_shape, num_classes)
        self.optim = cfg.optim
        self.regularizer = Regularizer(cfg.reg, self.model)
        self.label_smoothing = cfg.reg.label_smoothing
        # Keys are "<split>_acc" / "<split>_loss": a bare "train" would shadow Module.train.
        self.metrics = nn.ModuleDict(
            {f"{s}_acc": MulticlassAccuracy(num_classes, average="micro") for s in SPLITS}
            | {f"{s}_loss": MeanMetric(nan_strategy="disable") for s in SPLITS}
            | {"train_reg_loss": MeanMetric(nan_strategy="disable")}
        )
        self.outputs: dict[str, list[tuple[Tensor, ...]]] = {s: [] for s in SPLITS}
        self.history: list[dict[str, float]] = []
        self.diverged = False
        self.log_norms = cfg.trainer.log_norms
        self.grad_norms: dict[str, Tensor] = {}
        self.diverge_above = 10 * math.log(num_classes)  # ten times the loss of a uniform guess

    @classmethod
    def of(cls, cfg: ExperimentConfig, data: DataModule, model: nn.Module) -> Classifier:
        """The module for ``model`` trained on ``data`` under ``cfg``."""
        return cls(to_dict(cfg), data.input_shape, list(data.classes),
                   data.mean.flatten().tolist(), data.std.flatten().tolist(), model, cfg)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _step(self, batch: tuple[Tensor, Tensor], split: str, smoothing: float = 0.0) -> Tensor:
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        self.outputs[split].append((logits.detach().argmax(1), y, loss.detach()))
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, "train", self.label_smoothing)  # val/test: plain cross-entropy
        if self.regularizer.active:
            reg_loss = self.regularizer()
            self._metric("train_reg_loss").update(reg_loss.detach())
            loss = loss + reg_loss
        return loss

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        if self.log_norms:  # the epoch's last step is what gets logged
            self.grad_norms = {f"grad_norm/{name}": p.grad.detach().norm()
                               for name, p in self.model.named_parameters() if p.grad is not None}

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def _metric(self, name: str) -> Metric:
        return cast(Metric, self.metrics[name])

    def _epoch_metrics(self, split: str) -> dict[str, Tensor]:
        preds, targets, losses = (torch.cat(t) if t[0].dim() else torch.stack(t)
                                  for t in zip(*self.outputs[split], strict=True))
        sizes = torch.tensor([len(o[1]) for o in self.outputs[split]], device=losses.device)
        self.outputs[split].clear()
        metrics = {}
        for name, metric, args in (("acc", self._metric(f"{split}_acc"), (preds, targets)),
                                   ("loss", self._metric(f"{split}_loss"), (losses, sizes))):
            metric.update(*args)
            metrics[logged(split, name)] = metric.compute()  # over every process's shard
            metric.reset()
        return metrics

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self._epoch_metrics("val"))

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._epoch_metrics("test"))

    def on_train_epoch_end(self) -> None:
        metrics = self._epoch_metrics("train")
        reg = self._metric("train_reg_loss")
        metrics[logged("train", "reg_loss")] = reg.compute() if reg.update_count else torch.zeros(())
        reg.reset()
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)  # configure_optimizers returns one
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        if self.log_norms:
            metrics |= self.grad_norms
            metrics |= {f"weight_norm/{name}": p.detach().norm()
                        for name, p in self.model.named_parameters()}
        self.log_dict(metrics)
        row: dict[str, float] = {"epoch": self.current_epoch}
        row.update({k: float(v) for k, v in self.trainer.callback_metrics.items()})
        self.history.append(row)
        loss = metrics[TRAIN_LOSS]
        if not torch.isfinite(loss) or loss > self.diverge_above:  # stop; the run is marked diverged
            self.diverged = True
            self.trainer.should_stop = True

    def configure_optimizers(self) -> Any:
        optimizer = OPTIMIZERS[self.optim.name](self.parameters(), self.optim)
        factory = SCHEDULERS[self.optim.scheduler]
        if factory is None:
            return optimizer
        scheduler = factory(optimizer, self.optim, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
