"""Inference with batch norm folded into the convs, against the unfused model and against the
same network built without norm layers (what "BN costs nothing at test time" promises), on the
digits baseline (1×8×8) and on a CIFAR-shaped network (3×32×32, channels 32-64-128), batch 256,
where the norm layers' share of an unfused pass is larger."""

import torch

from benchmarks.common import Ratio, median_times
from cnnlab.config import load_config
from cnnlab.diagnostics import fuse_bn
from cnnlab.models.convnet import ConvNet

BATCH = 256
SHAPES = {"digits baseline 1×8×8": ((1, 8, 8), [], 8192),
          "CIFAR-shaped 3×32×32, channels 32-64-128": ((3, 32, 32), ["model.channels=[32,64,128]"],
                                                      2048)}


def _passes(model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        for i in range(0, len(x), BATCH):
            model(x[i : i + BATCH])


def bench(repeats: int = 5) -> list[Ratio]:
    out = []
    for name, (shape, overrides, n) in SHAPES.items():
        torch.manual_seed(0)
        model = ConvNet(load_config(overrides=overrides).model, shape, 10).eval()
        plain = ConvNet(load_config(overrides=[*overrides, "model.norm=none"]).model, shape,
                        10).eval()
        fused = fuse_bn(model)
        x = torch.randn(n, *shape)
        models = {"unfused": model, "fused": fused, "no norm": plain}
        for _ in range(3):  # warm-up (oneDNN prepares each new weight layout once)
            for m in models.values():
                _passes(m, x)
        t = median_times({k: (lambda m=m, x=x: _passes(m, x)) for k, m in models.items()},
                         repeats)
        rate = {k: n / v for k, v in t.items()}
        detail = (f"{name}, batch {BATCH}: fused {rate['fused']:,.0f}, unfused "
                  f"{rate['unfused']:,.0f}, no norm {rate['no norm']:,.0f} img/s")
        # the course's promise is "as if BN were not there" (the no-norm row); against unfused,
        # folding only has to never slow inference down
        out += [Ratio(f"inference, BN folded / unfused ({name.split(' ')[0]})",
                      t["unfused"] / t["fused"], 1.0, detail),
                Ratio(f"inference, BN folded / no norm layers ({name.split(' ')[0]})",
                      t["no norm"] / t["fused"], 0.97, detail)]
    return out
