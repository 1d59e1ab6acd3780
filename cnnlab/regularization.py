"""Weight penalties added to the data loss: none, L1, L2 and elastic net.

With λ = ``reg.strength`` and α = ``reg.l1_ratio``, on conv and linear weights only (never biases
or norm parameters):

- l2:      λ/2 · ‖W‖²
- l1:      λ · Σ|W|
- elastic: λ1 · Σ|W| + λ2 · ‖W‖²  with λ1 = λ·α and λ2 = λ·(1 − α)/2
           (α = 1 is L1, α = 0 is L2 — the glmnet / scikit-learn convention)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor, nn

from cnnlab.config import RegConfig

Penalty = Callable[[list[Tensor], float, float], Tensor]


def _l1(weights: list[Tensor], strength: float, l1_ratio: float) -> Tensor:
    return cast(Tensor, strength * sum(w.abs().sum() for w in weights))


def _l2(weights: list[Tensor], strength: float, l1_ratio: float) -> Tensor:
    return cast(Tensor, strength / 2 * sum(w.pow(2).sum() for w in weights))


def _elastic(weights: list[Tensor], strength: float, l1_ratio: float) -> Tensor:
    return _l1(weights, strength * l1_ratio, 0.0) + _l2(weights, strength * (1 - l1_ratio), 0.0)


REGULARIZERS: dict[str, Penalty | None] = {
    "none": None,
    "l1": _l1,
    "l2": _l2,
    "elastic": _elastic,
}


def penalized_weights(model: nn.Module) -> list[Tensor]:
    """The weights a penalty applies to: those of conv and linear layers."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


class Regularizer:
    """The penalty term of ``cfg`` over ``model``'s conv and linear weights."""

    def __init__(self, cfg: RegConfig, model: nn.Module) -> None:
        self.penalty = REGULARIZERS[cfg.kind]
        self.strength = cfg.strength
        self.l1_ratio = cfg.l1_ratio
        self.weights = penalized_weights(model)
        self.active = self.penalty is not None and self.strength > 0

    def __call__(self) -> Tensor:
        if self.penalty is None or not self.active:
            return torch.zeros((), device=self.weights[0].device)
        return self.penalty(self.weights, self.strength, self.l1_ratio)
