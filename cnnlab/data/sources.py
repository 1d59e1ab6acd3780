"""Datasets by name, each loaded whole into memory as float images in [0, 1]."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from cnnlab.config import DataConfig


@dataclass(frozen=True)
class ImageData:
    """Images ``x`` (N×C×H×W float in [0, 1]), labels ``y`` (N, int64) and the class names."""

    x: Tensor
    y: Tensor
    classes: list[str]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x.shape[1:]
        return c, h, w


def load_digits(cfg: DataConfig) -> ImageData:
    """scikit-learn's 8×8 handwritten digits (1,797 images, shipped with the package)."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    return ImageData(x, y, [str(name) for name in bunch.target_names])


SOURCES: dict[str, Callable[[DataConfig], ImageData]] = {
    "digits": load_digits,
}
