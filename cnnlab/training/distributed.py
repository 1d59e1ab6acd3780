"""Training on several processes (``trainer.devices``, ``trainer.num_nodes``, ``trainer.strategy=ddp``).

Lightning launches the processes and all-reduces gradients; cnnlab shards its in-memory batches
per rank (``datamodule.TensorBatches``), syncs epoch metrics through torchmetrics and writes files
and W&B runs on rank 0 only. ``model.sync_batchnorm`` computes batch-norm statistics over the
global batch: torch's ``SyncBatchNorm`` on GPUs, ``GlobalBatchNorm2d`` below on CPUs (gloo),
which torch's does not support.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightning.pytorch.plugins.layer_sync import LayerSync, TorchSyncBatchNorm
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn
from torch.distributed._functional_collectives import all_reduce  # differentiable; torch's pick

from cnnlab.training.fast import device_type


def is_rank_zero() -> bool:
    """True in the process that writes files (the only one without distributed training)."""
    return getattr(rank_zero_only, "rank", 0) == 0


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose training statistics are the mean and variance over every process's batch.

    The sums are all-reduced with autograd (torch's functional collectives), so gradients flow through
    the global statistics exactly as through a single large batch.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        dtype, x = x.dtype, x.float()  # statistics in 32 bits, also under bf16 autocast
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device)
        sums = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), count])
        sums = all_reduce(sums, "sum", dist.group.WORLD)  # type: ignore[arg-type]  # set: initialized
        c = self.num_features
        n = sums[-1]
        mean = sums[:c] / n
        var = sums[c : 2 * c] / n - mean * mean
        if self.track_running_stats:
            assert self.num_batches_tracked is not None and self.running_mean is not None
            assert self.running_var is not None  # track_running_stats: torch made all three
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, m)
                self.running_var.lerp_(var * n / (n - 1).clamp_min(1), m)
        shape = (1, c, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        y = y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y
        return y.to(dtype)


class GlobalBatchNormSync(LayerSync):
    """Lightning plugin: swap every ``BatchNorm2d`` for ``GlobalBatchNorm2d`` while fitting."""

    def apply(self, model: nn.Module) -> nn.Module:
        return _swap(model, nn.BatchNorm2d, GlobalBatchNorm2d)

    def revert(self, model: nn.Module) -> nn.Module:
        return _swap(model, GlobalBatchNorm2d, nn.BatchNorm2d)


def _swap(model: nn.Module, old: type[nn.BatchNorm2d], new: type[nn.BatchNorm2d]) -> nn.Module:
    for name, child in model.named_children():
        if type(child) is old:
            swapped = new(child.num_features, child.eps, child.momentum, child.affine,
                          child.track_running_stats)
            swapped.load_state_dict(child.state_dict())
            swapped.train(child.training)
            setattr(model, name, swapped)
        else:
            _swap(child, old, new)
    return model


def layer_sync(sync_batchnorm: bool, accelerator: str) -> list[LayerSync]:
    """The Lightning plugin list for ``model.sync_batchnorm`` on this accelerator."""
    if not sync_batchnorm:
        return []
    return [TorchSyncBatchNorm() if device_type(accelerator) == "cuda" else GlobalBatchNormSync()]
