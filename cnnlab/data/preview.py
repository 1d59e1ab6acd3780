"""``cnnlab augment-preview``: what the configured augmentation does to real training samples."""

from __future__ import annotations

from pathlib import Path

from cnnlab.config import ExperimentConfig
from cnnlab.data.augment import preview
from cnnlab.data.datamodule import DataModule
from cnnlab.errors import CnnlabError, count
from cnnlab.images import check_png_out, is_cnnlab_png, png_bytes
from cnnlab.outputs.files import write_output

MAX_SAMPLES, MAX_VARIANTS = 256, 64  # 10⁵ × 10⁵ ran for minutes; a grid beyond is unreadable


def write_preview(cfg: ExperimentConfig, out: Path, samples: int, variants: int) -> None:
    """A PNG grid at ``out``: ``samples`` training images (first column), ``variants`` augmented
    copies of each."""
    count("--samples", samples, 1, MAX_SAMPLES, "rows of the grid")
    count("--variants", variants, 1, MAX_VARIANTS, "columns of the grid")
    check_png_out(out)
    data = DataModule(cfg.data, cfg.seed)
    data.setup("fit")
    if data.augment is None:
        raise CnnlabError("data.augment: every op is off; allowed: enable some, e.g. "
                          "data.augment.hflip=true data.augment.rotate=15")
    grid = preview(data.train[0][:samples], data.augment, data.mean, data.std, variants, cfg.seed)
    write_output(out, png_bytes(grid), is_cnnlab_png)
