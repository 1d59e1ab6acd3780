"""cnnlab: a PyTorch Lightning lab for comparing ConvNet training techniques."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cnnlab.models.predictor import Predictor

__version__ = "0.3.0"


def load(path: str | Path) -> Predictor:
    """A trained model, ready in eval mode, from a run folder, a checkpoint or an export: it takes
    N×C×H×W pixels in [0, 1] and has ``classes`` and ``input_shape`` (see ``cnnlab.export``)."""
    from cnnlab.export import load as load_model  # keeps ``import cnnlab`` (and the CLI) light

    return load_model(Path(path))
