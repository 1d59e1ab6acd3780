"""The course ConvNet: [(conv → norm → ReLU) × n → (spatial dropout) → (pool)] × blocks → FC head."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from math import prod

from torch import Tensor, nn

from cnnlab.config import ModelConfig
from cnnlab.errors import CnnlabError
from cnnlab.models.norms import NORMS

Shape = tuple[int, int, int]

POOLS: dict[str, type[nn.Module] | None] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d, "none": None}


def _kaiming(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _xavier(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


INITS: dict[str, Callable[[nn.Module], None]] = {
    "kaiming": _kaiming,
    "xavier": _xavier,
    "default": lambda model: None,
}


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Conv output size: ⌊(H + 2P − K)/S⌋ + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def pool_out(size: int, kernel: int, stride: int) -> int:
    """Pool output size: ⌊(H − K)/S⌋ + 1."""
    return (size - kernel) // stride + 1


def feature_shape(cfg: ModelConfig, input_shape: Shape) -> Shape:
    """C×H×W after the conv blocks; an impossible architecture names the layer and its sizes."""
    c, h, w = input_shape
    for block, channels in enumerate(cfg.channels, start=1):
        for conv in range(1, cfg.convs_per_block + 1):
            where = f"block {block}" + (f" conv {conv}" if cfg.convs_per_block > 1 else " conv")
            oh, ow = (conv_out(s, cfg.kernel_size, cfg.stride, cfg.padding) for s in (h, w))
            if min(oh, ow) < 1:
                raise CnnlabError(
                    f"model: {where} output would be {oh}×{ow} (input {h}×{w}, kernel "
                    f"{cfg.kernel_size}, stride {cfg.stride}, padding {cfg.padding}); allowed: a "
                    "spatial size of at least 1 — use a smaller kernel, more padding or fewer blocks"
                )
            if cfg.norm == "instance" and oh * ow == 1:
                raise CnnlabError(
                    f"model.norm: instance norm needs more than one spatial element, but {where} "
                    "output is 1×1; allowed: a larger input, fewer blocks, or another norm"
                )
            c, h, w = channels, oh, ow
        if POOLS[cfg.pool] is not None:
            ph, pw = (pool_out(s, cfg.pool_kernel, cfg.pool_stride) for s in (h, w))
            if min(ph, pw) < 1:
                raise CnnlabError(
                    f"model: block {block} pool output would be {ph}×{pw} (input {h}×{w}, kernel "
                    f"{cfg.pool_kernel}, stride {cfg.pool_stride}); allowed: a spatial size of at "
                    "least 1 — use a smaller pool_kernel, model.pool=none or fewer blocks"
                )
            h, w = ph, pw
    return c, h, w


class ConvNet(nn.Module):
    """A ConvNet whose norm, pooling, dropout and init come from ``ModelConfig``."""

    def __init__(self, cfg: ModelConfig, input_shape: Shape, num_classes: int) -> None:
        super().__init__()
        flat = prod(feature_shape(cfg, input_shape))
        pool = POOLS[cfg.pool]
        layers: list[nn.Module] = []
        c_in = input_shape[0]
        for c_out in cfg.channels:
            for _ in range(cfg.convs_per_block):  # VGG-style: several convs before each pool
                layers += [
                    nn.Conv2d(c_in, c_out, cfg.kernel_size, cfg.stride, cfg.padding),
                    NORMS[cfg.norm](c_out, cfg.groups),
                    nn.ReLU(inplace=True),
                ]
                c_in = c_out
            if cfg.spatial_dropout > 0:
                layers.append(nn.Dropout2d(cfg.spatial_dropout))
            if pool is not None:
                layers.append(pool(cfg.pool_kernel, cfg.pool_stride))
        self.features = nn.Sequential(*layers)

        head: list[nn.Module] = [nn.Flatten()]
        widths = [flat, *cfg.hidden_units]
        for w_in, w_out in pairwise(widths):
            if cfg.dropout > 0:
                head.append(nn.Dropout(cfg.dropout))
            head += [nn.Linear(w_in, w_out), nn.ReLU(inplace=True)]
        if cfg.dropout > 0:
            head.append(nn.Dropout(cfg.dropout))
        head.append(nn.Linear(widths[-1], num_classes))
        self.classifier = nn.Sequential(*head)
        INITS[cfg.init](self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
