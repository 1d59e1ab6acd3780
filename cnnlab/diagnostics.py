"""Course diagnostics on a model: BN folded into convs, the BN train/eval gap, curves, filters,
and the mechanism metrics an ablation compares (sparsity, weight norm, accuracy, speed)."""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.utils import make_grid

from cnnlab.images import figure_png, to_uint8
from cnnlab.metrics import VAL_ACC
from cnnlab.regularization import penalized_weights

# |w| below this counts as zero in ``weight_sparsity``: about 1% of a typical initial conv weight
# (Kaiming init over 9–75 fan-in gives |w| ~ 0.1), far above float noise.
SPARSITY_THRESHOLD = 1e-3


def fuse_bn(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm2d folded into the conv before it.

    At test time BN is an affine map per channel, so it folds into the conv's weights and bias:
    the same outputs with one layer less (PyTorch's ``fuse_conv_bn_eval``).
    """
    fused = copy.deepcopy(model).eval()
    for parent in fused.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        layers = list(parent)
        for i in range(len(layers) - 1):
            conv, norm = layers[i], layers[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                parent[i] = fuse_conv_bn_eval(conv, norm)
                parent[i + 1] = nn.Identity()
    return fused


@torch.no_grad()
def max_abs_diff(a: nn.Module, b: nn.Module, x: Tensor, batch: int = 512) -> float:
    """Largest absolute difference of two models' outputs over ``x`` (both in eval mode)."""
    a.eval(), b.eval()
    return max(float((a(x[i : i + batch]) - b(x[i : i + batch])).abs().max())
               for i in range(0, len(x), batch))


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int) -> float:
    """Share of ``x`` classified as ``y`` by ``model`` in its current mode."""
    correct = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
                  for i in range(0, len(x), batch))
    return correct / len(y)


@torch.no_grad()
def bn_train_eval_gap(model: nn.Module, x: Tensor, y: Tensor, batch: int) -> float | None:
    """Accuracy with batch statistics minus accuracy with running statistics (None without BN).

    The classic bug is evaluating in train mode: batch norm then normalises with the statistics
    of each evaluation batch (of ``batch`` samples, the training batch size). Dropout stays off,
    so only batch norm makes the difference; a copy leaves the running statistics untouched.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return None
    probe = copy.deepcopy(model).eval()
    eval_acc = accuracy(probe, x, y, batch)
    for m in probe.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    return accuracy(probe, x, y, batch) - eval_acc


@torch.no_grad()
def weight_sparsity(model: nn.Module, threshold: float = SPARSITY_THRESHOLD) -> float:
    """Share of conv and linear weights (what a penalty acts on) with |w| < ``threshold``."""
    weights = penalized_weights(model)
    small = sum(int((w.abs() < threshold).sum()) for w in weights)
    return small / sum(w.numel() for w in weights)


@torch.no_grad()
def weight_l2(model: nn.Module) -> float:
    """L2 norm ‖W‖ of all conv and linear weights together (biases and norm layers excluded)."""
    return float(sum(float(w.double().pow(2).sum()) for w in penalized_weights(model)) ** 0.5)


def epochs_to(history: list[dict[str, Any]], target: float) -> int | None:
    """The first epoch (counting from 1) whose validation accuracy reaches ``target``."""
    return next((i + 1 for i, row in enumerate(history) if row.get(VAL_ACC, -1.0) >= target),
                None)


def first_conv_filters(model: nn.Module) -> Tensor:
    """The first conv layer's filters as one image grid (each filter scaled to [0, 1])."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    w = conv.weight.detach().float().cpu()
    if w.shape[1] not in (1, 3):
        w = w[:, :1]
    low = w.amin(dim=(1, 2, 3), keepdim=True)
    high = w.amax(dim=(1, 2, 3), keepdim=True)
    w = (w - low) / (high - low).clamp_min(1e-8)
    w = nn.functional.interpolate(w, scale_factor=max(1, 32 // w.shape[-1]), mode="nearest")
    return make_grid(w, nrow=8, padding=2, pad_value=1.0)


def filters_png(model: nn.Module, when: str) -> bytes:
    """The first conv layer's filters (``first_conv_filters``) as a titled figure: what they
    are, how many, their size, and how they are scaled (a bare grid said none of it)."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    count, channels, height, width = conv.weight.shape
    shown = "RGB" if channels == 3 else "channel 0 of " + str(channels) if channels > 1 else "gray"
    fig = Figure(figsize=(6, 6 * max(1, -(-count // 8)) / 8 + 0.8))
    ax = fig.subplots()
    ax.imshow(to_uint8(first_conv_filters(model)), cmap="gray", interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"first conv layer at the {when} of training: {count} filters of "
                 f"{height}×{width} ({shown}),\neach scaled from its own lowest weight (black) "
                 "to its highest (white)", fontsize=9)
    return figure_png(fig)


def curves_png(history: list[dict[str, Any]]) -> bytes:
    """Train/val loss and accuracy per epoch, side by side."""
    epochs = [row["epoch"] + 1 for row in history]
    fig = Figure(figsize=(9, 3.5))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        for split in ("train", "val"):
            values = [row.get(f"{split}/{metric}") for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend()
    axes[0].set_yscale("log")
    fig.tight_layout()
    return figure_png(fig, dpi=100)


def speedup(model: nn.Module, fused: nn.Module, x: Tensor, batch: int = 256, repeats: int = 7
            ) -> tuple[float, float, float]:
    """How many times faster ``fused`` runs eval-mode passes over ``x`` (batches of ``batch``)
    than ``model``: the median, lowest and highest of ``repeats`` ratios, each of one pass of
    both timed back to back, after two warm-up passes each (one timing of each, the first one
    cold, printed 14.08×, then 1.33× and 0.62× for the same model)."""
    def seconds(net: nn.Module) -> float:
        start = time.perf_counter()
        for i in range(0, len(x), batch):
            net(x[i: i + batch])
        return time.perf_counter() - start

    model.eval()
    fused.eval()
    with torch.inference_mode():
        for _ in range(2):
            seconds(model), seconds(fused)
        ratios = [seconds(model) / seconds(fused) for _ in range(repeats)]
    return statistics.median(ratios), min(ratios), max(ratios)
