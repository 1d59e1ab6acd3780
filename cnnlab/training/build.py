"""One builder of (data, model) from a config, shared by fit, the LR finder, export and summary."""

from __future__ import annotations

import lightning as L

from cnnlab.config import ExperimentConfig
from cnnlab.data.datamodule import DataModule
from cnnlab.data.sources import ImageData
from cnnlab.models.convnet import ConvNet


def build(cfg: ExperimentConfig, fold: tuple[int, int] | None = None, data: ImageData | None = None,
          refit: bool = False) -> tuple[DataModule, ConvNet]:
    """The config's data module (split, normalised) and its freshly initialised network.

    Seeded with ``cfg.seed`` first, so the same config always starts from the same weights.
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = DataModule(cfg.data, cfg.seed, fold=fold, data=data, refit=refit)
    return datamodule, ConvNet(cfg.model, datamodule.input_shape, datamodule.num_classes)
