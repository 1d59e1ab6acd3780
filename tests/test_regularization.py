"""Penalties equal a hand computation and skip biases and norm parameters."""

import pytest
import torch
from torch import nn

from cnnlab.config import RegConfig
from cnnlab.regularization import Regularizer

W1 = torch.tensor([[[[1.0, -2.0], [0.5, 0.0]]]])  # conv 1→1, 2×2
W2 = torch.tensor([[3.0], [-1.0]])  # linear 1→2


def tiny() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(1, 1, 2), nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        model[0].weight.copy_(W1)
        model[3].weight.copy_(W2)
    return model


ABS = 1 + 2 + 0.5 + 0 + 3 + 1  # Σ|W| = 7.5
SQ = 1 + 4 + 0.25 + 0 + 9 + 1  # ‖W‖² = 15.25


@pytest.mark.parametrize(
    ("kind", "strength", "l1_ratio", "expected"),
    [
        ("none", 0.1, 0.5, 0.0),
        ("l1", 0.1, 0.5, 0.1 * ABS),
        ("l2", 0.1, 0.5, 0.1 / 2 * SQ),
        ("elastic", 0.1, 0.3, 0.1 * 0.3 * ABS + 0.1 * 0.7 / 2 * SQ),
        ("elastic", 0.2, 1.0, 0.2 * ABS),
        ("elastic", 0.2, 0.0, 0.2 / 2 * SQ),
    ],
)
def test_penalty_matches_hand_computation(kind: str, strength: float, l1_ratio: float,
                                          expected: float) -> None:
    penalty = Regularizer(RegConfig(kind, strength, l1_ratio), tiny())()
    assert penalty.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", ["l1", "l2", "elastic"])
def test_biases_and_norm_parameters_are_excluded(kind: str) -> None:
    model = tiny()
    before = Regularizer(RegConfig(kind, 0.1, 0.5), model)().item()
    with torch.no_grad():
        model[0].bias.fill_(100.0)
        model[1].weight.fill_(100.0)
        model[1].bias.fill_(-100.0)
        model[3].bias.fill_(100.0)
    assert Regularizer(RegConfig(kind, 0.1, 0.5), model)().item() == pytest.approx(before)


def test_penalty_has_gradient_on_weights() -> None:
    model = tiny()
    Regularizer(RegConfig("l2", 1.0, 0.5), model)().backward()
    assert torch.allclose(model[0].weight.grad, W1)  # d(λ/2‖W‖²)/dW = λW
    assert model[0].bias.grad is None
