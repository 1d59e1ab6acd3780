"""Inference with batch norm folded into the convs vs the unfused model, batch 256."""

import torch

from benchmarks.common import Ratio, median_times
from cnnlab.config import load_config
from cnnlab.diagnostics import fuse_bn
from cnnlab.models.convnet import ConvNet

N, BATCH = 8192, 256


def _passes(model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        for i in range(0, len(x), BATCH):
            model(x[i : i + BATCH])


def bench(repeats: int = 7) -> list[Ratio]:
    torch.manual_seed(0)
    model = ConvNet(load_config().model, (1, 8, 8), 10).eval()  # the digits baseline
    fused = fuse_bn(model)
    x = torch.randn(N, 1, 8, 8)
    for _ in range(3):  # warm-up (oneDNN prepares each new weight layout once)
        _passes(model, x), _passes(fused, x)
    t = median_times({"unfused": lambda: _passes(model, x), "fused": lambda: _passes(fused, x)},
                     repeats)
    return [Ratio("inference, BN folded into conv / unfused", t["unfused"] / t["fused"], 1.1,
                  f"digits baseline, batch {BATCH}: {N / t['fused']:,.0f} vs "
                  f"{N / t['unfused']:,.0f} img/s")]
