"""Per-layer output shape, parameter count and multiply-adds (bias excluded, as in the course).

Forward hooks, not ``torch.utils.flop_counter``: it counts FLOPs per operator (no layer
names, no output shapes), which the course's per-layer table needs."""

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LayerRow:
    """One leaf layer: its name, type, output shape (no batch dim), parameters and MACs."""

    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    macs: int


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out[0].numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


def summarize(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerRow]:
    """Run one zero sample through ``model`` in eval mode and record every leaf layer (on the
    model's device: on ``meta``, any size is summarised without allocating it)."""
    rows: list[LayerRow] = []
    hooks = [
        module.register_forward_hook(
            lambda m, _inp, out, name=name: rows.append(
                LayerRow(
                    name,
                    type(m).__name__,
                    tuple(out.shape[1:]),
                    sum(p.numel() for p in m.parameters(recurse=False)),
                    _macs(m, out),
                )
            )
        )
        for name, module in model.named_modules()
        if not list(module.children())
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters(), torch.empty(0)).device
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return rows
