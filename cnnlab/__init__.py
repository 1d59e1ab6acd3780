"""cnnlab: a PyTorch Lightning lab for comparing ConvNet training techniques.

From Python (a notebook): ``cnnlab.fit``, ``cnnlab.ablate``, ``cnnlab.tune`` and ``cnnlab.report``
run what the ``cnnlab`` commands run (``cnnlab.api``); ``cnnlab.load`` gives a trained model.
Bad input raises ``cnnlab.CnnlabError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab.api import StudyResult, ablate, fit, report, tune
from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    from cnnlab.models.predictor import Predictor

__version__ = "0.3.0"

__all__ = ["CnnlabError", "StudyResult", "__version__", "ablate", "fit", "load", "report", "tune"]


def load(path: str | Path) -> Predictor:
    """A trained model, ready in eval mode, from a run folder, a checkpoint or an export: it takes
    N×C×H×W pixels in [0, 1] and has ``classes`` and ``input_shape`` (see ``cnnlab.export``)."""
    from cnnlab.export import load as load_model  # keeps ``import cnnlab`` (and the CLI) light

    return load_model(Path(path))
