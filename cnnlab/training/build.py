"""One builder of (data, model) from a config, shared by fit, the LR finder, export and summary."""

from __future__ import annotations

import lightning as L

from cnnlab.config import ExperimentConfig
from cnnlab.data.datamodule import DataModule
from cnnlab.data.sources import Datasets, load_cached
from cnnlab.data.splits import run_indices
from cnnlab.models.convnet import ConvNet, feature_shape
from cnnlab.models.summary import LayerRow, summarize


def build(cfg: ExperimentConfig, fold: tuple[int, int] | None = None,
          datasets: Datasets | None = None, refit: bool = False) -> tuple[DataModule, ConvNet]:
    """The config's data module (set up: split, normalised) and its freshly initialised network.

    Seeded with ``cfg.seed`` first, so the same config always starts from the same weights.
    ``datasets`` lets a study's runs share each dataset, loaded once.
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = None if datasets is None else load_cached(cfg.data, datasets)
    datamodule = DataModule(cfg.data, cfg.seed, fold=fold, data=data, refit=refit)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule, ConvNet(cfg.model, datamodule.input_shape, datamodule.num_classes)


def check_buildable(cfg: ExperimentConfig, datasets: Datasets,
                    fold: tuple[int, int] | None = None) -> None:
    """The config's data loads and splits (fold ``fold``) and its network fits the images: a
    study checks every arm or corner of its space this way before its first trial (indices
    only: nothing is normalised or copied)."""
    data = load_cached(cfg.data, datasets)
    run_indices(cfg.data, data.y.numpy(), data.test_from, fold)
    feature_shape(cfg.model, data.input_shape)


def summary_of(cfg: ExperimentConfig, input_shape: tuple[int, int, int] | None, num_classes: int
               ) -> tuple[list[LayerRow], tuple[int, int, int], int]:
    """Per-layer rows of the configured network on ``input_shape`` (default: the configured
    data's, with its classes), with the shape and class count they are for."""
    if input_shape is None:  # the network the fit would train, on the configured data
        data, model = build(cfg)
        input_shape, num_classes = data.input_shape, data.num_classes
    else:
        model = ConvNet(cfg.model, input_shape, num_classes)
    return summarize(model, input_shape), input_shape, num_classes
