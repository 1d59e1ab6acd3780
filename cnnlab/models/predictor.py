"""A trained network that takes images as the dataset stores them, with what it needs to be used.

Training sees normalised images (the training split's per-channel mean and std); a user of the
model has pixels. ``Predictor`` puts the normalisation inside the module, so pixels in [0, 1]
(8-bit image files divided by 255, as every cnnlab data source stores them) give the trained
answer, and keeps the class names and the input shape beside the weights.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

FAR = 1.0  # inputs whose mean is this many training stds off, or whose std is 3× off, get a word


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

    def input_warning(self, x: Tensor) -> str | None:
        """One line naming the likely cause when pixels ``x`` are far from the training data's
        per-channel mean and std (mis-scaled, inverted, another preprocessing), else None.
        Answers are still given: a network answers anything, so the warning is the only sign."""
        mean, std = self.mean.flatten().cpu(), self.std.flatten().cpu()
        pixels = x.detach().float().cpu().transpose(0, 1).flatten(1)
        m, s = pixels.mean(1), pixels.std(1, correction=0)
        off = ((m - mean).abs() / std).max().item()
        spread = (s / std).clamp_min(1e-12).log().abs().max().exp().item()
        if off <= FAR and spread <= 3:
            return None
        trained = (f"training pixels had mean {self._text(mean)} and std {self._text(std)}; "
                   f"these have mean {self._text(m)} and std {self._text(s)}")
        top = pixels.max().item()
        if 1.5 < top <= 16 + 1e-6:
            cause = (f"pixels reach {top:.4g}: they look like 0–16 values (scikit-learn's digits) "
                     "not divided by 16 (cnnlab models take pixels in [0, 1])")
        elif top > 16:
            cause = (f"pixels reach {top:.4g}: they look like 0–255 values not divided by 255 "
                     "(cnnlab models take pixels in [0, 1])")
        elif top <= 16 / 255 + 1e-6 and top > 0:
            cause = ("pixels are all ≤ 16/255: they look like 0–16 integers read as /255 (divide "
                     "by their maximum, 16, instead)")
        elif ((1 - m - mean).abs() / std).max().item() < off / 2:
            cause = "pixels look inverted (1 − x: dark strokes on light where training had the reverse?)"
        else:
            cause = "the inputs look unlike the training data (another preprocessing or kind of image?)"
        return f"{cause}; {trained}"

    @staticmethod
    def _text(values: Tensor) -> str:
        return "/".join(f"{v:.2f}" for v in values.tolist())

    @torch.no_grad()
    def predict(self, x: Tensor, batch: int = 512, check: bool = True) -> tuple[Tensor, Tensor]:
        """(class index, its softmax probability) per image, in eval mode; with ``check``, a
        ``UserWarning`` when the pixels look unlike the training data (``input_warning``)."""
        warning = self.input_warning(x) if check else None
        if warning:
            warnings.warn(warning, UserWarning, stacklevel=2)
        self.eval()
        probs = torch.cat([self(x[i : i + batch]).float().softmax(1) for i in range(0, len(x), batch)])
        confidence, index = probs.max(1)
        return index, confidence
