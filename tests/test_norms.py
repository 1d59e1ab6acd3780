"""Norm layers normalise over the axes the course gives, and BN differs between train and eval."""

import pytest
import torch

from cnnlab.config import load_config
from cnnlab.models.convnet import ConvNet
from cnnlab.models.norms import NORMS

X = torch.randn(6, 8, 5, 5) * 3 + 2


def _standardised(y: torch.Tensor, dims: tuple[int, ...]) -> None:
    mean = y.mean(dim=dims)
    std = y.var(dim=dims, unbiased=False).sqrt()
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-4)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-2)


@pytest.mark.parametrize(
    ("name", "dims", "view"),
    [
        ("batch", (0, 2, 3), None),  # per channel over N,H,W
        ("layer", (1, 2, 3), None),  # per sample over C,H,W
        ("instance", (2, 3), None),  # per sample and channel over H,W
        ("group", (2, 3, 4), (6, 4, 2, 5, 5)),  # per sample and group of 2 channels
    ],
)
def test_norm_statistics(name: str, dims: tuple[int, ...], view: tuple[int, ...] | None) -> None:
    norm = NORMS[name](8, 4).train()
    y = norm(X)
    _standardised(y.view(view) if view else y, dims)


@pytest.mark.parametrize("name", ["batch", "layer", "instance", "group"])
def test_affine_parameters_are_per_channel(name: str) -> None:
    norm = NORMS[name](8, 4)
    assert norm.weight.shape == (8,) and norm.bias.shape == (8,)


def test_none_is_identity() -> None:
    assert torch.equal(NORMS["none"](8, 4)(X), X)


def _train_eval_gap(norm: str) -> float:
    cfg = load_config(overrides=[f"model.norm={norm}", "model.dropout=0"])
    torch.manual_seed(0)
    model = ConvNet(cfg.model, (1, 8, 8), 10)
    x = torch.randn(16, 1, 8, 8) * 2 + 1
    train_out = model.train()(x)
    eval_out = model.eval()(x)
    return (train_out - eval_out).abs().max().item()


def test_batch_norm_eval_uses_running_statistics() -> None:
    assert _train_eval_gap("batch") > 1e-2


@pytest.mark.parametrize("norm", ["layer", "instance", "group", "none"])
def test_per_sample_norms_are_the_same_in_train_and_eval(norm: str) -> None:
    assert _train_eval_gap(norm) < 1e-5
