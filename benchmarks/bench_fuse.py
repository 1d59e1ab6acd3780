"""Inference with batch norm folded into the convs vs the unfused model, batch 256."""

import torch

from benchmarks.common import Ratio
from cnnlab.config import load_config
from cnnlab.diagnostics import fuse_bn, inference_seconds
from cnnlab.models.convnet import ConvNet


def bench() -> list[Ratio]:
    torch.manual_seed(0)
    cfg = load_config(overrides=["model.channels=[32,64,128]"])
    model = ConvNet(cfg.model, (3, 32, 32), 10).eval()
    x = torch.randn(4096, 3, 32, 32)
    unfused, fused = inference_seconds(model, x), inference_seconds(fuse_bn(model), x)
    return [Ratio("inference, BN folded into conv / unfused", unfused / fused, 1.1,
                  f"3×32×32, channels [32, 64, 128], batch 256: {4096 / fused:,.0f} vs "
                  f"{4096 / unfused:,.0f} img/s")]
