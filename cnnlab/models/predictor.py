"""A trained network that takes images as the dataset stores them, with what it needs to be used.

Training sees normalised images (the training split's per-channel mean and std); a user of the
model has pixels. ``Predictor`` puts the normalisation inside the module, so pixels in [0, 1]
(8-bit image files divided by 255, as every cnnlab data source stores them) give the trained
answer, and keeps the class names and the input shape beside the weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Predictor(nn.Module):
    """``model`` behind its input normalisation; ``classes`` and ``input_shape`` as attributes."""

    mean: Tensor
    std: Tensor

    def __init__(self, model: nn.Module, mean: list[float], std: list[float], classes: list[str],
                 input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.classes = list(classes)
        self.input_shape: tuple[int, int, int] = (input_shape[0], input_shape[1], input_shape[2])

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of N×C×H×W pixels in [0, 1]."""
        return self.model((x - self.mean) / self.std)

    @torch.no_grad()
    def predict(self, x: Tensor, batch: int = 512) -> tuple[Tensor, Tensor]:
        """(class index, its softmax probability) per image, in eval mode."""
        self.eval()
        probs = torch.cat([self(x[i : i + batch]).float().softmax(1) for i in range(0, len(x), batch)])
        confidence, index = probs.max(1)
        return index, confidence
