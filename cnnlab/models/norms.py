"""Norm layers for ConvNet feature maps (x: N×C×H×W), by name.

- batch:    μ,σ over (N,H,W) per channel; running averages at eval.
- layer:    μ,σ over (C,H,W) per sample; same at train and eval; γ,β per channel.
- instance: μ,σ over (H,W) per sample and channel; γ,β per channel.
- group:    μ,σ over (C/G,H,W) per sample and group of channels; γ,β per channel.
- none:     identity.
"""

from collections.abc import Callable

from torch import nn

NormFactory = Callable[[int, int], nn.Module]

NORMS: dict[str, NormFactory] = {
    "batch": lambda channels, groups: nn.BatchNorm2d(channels),
    "layer": lambda channels, groups: nn.GroupNorm(1, channels),
    "instance": lambda channels, groups: nn.InstanceNorm2d(channels, affine=True),
    "group": lambda channels, groups: nn.GroupNorm(groups, channels),
    "none": lambda channels, groups: nn.Identity(),
}
