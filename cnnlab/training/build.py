"""One builder of (data, model) from a config, shared by fit, the LR finder, export and summary."""

from __future__ import annotations

import math

import lightning as L
import torch

from cnnlab.config import ExperimentConfig
from cnnlab.data.datamodule import DataModule
from cnnlab.data.sources import Datasets, load_cached, shape_of, total_memory
from cnnlab.data.splits import run_indices
from cnnlab.errors import CnnlabError
from cnnlab.models.convnet import ConvNet, Shape, feature_shape
from cnnlab.models.summary import LayerRow, summarize
from cnnlab.training.fast import FastPath, resolved

FLOAT = 4  # bytes of a float32


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
    check_memory(cfg, datamodule.input_shape, datamodule.num_classes)
    return datamodule, ConvNet(cfg.model, datamodule.input_shape, datamodule.num_classes)


def check_buildable(cfg: ExperimentConfig, datasets: Datasets,
                    fold: tuple[int, int] | None = None) -> None:
    """The config's data loads and splits (fold ``fold``) and its network fits the images: a
    study checks every arm or corner of its space this way before its first trial (indices
    only: nothing is normalised or copied)."""
    data = load_cached(cfg.data, datasets)
    run_indices(cfg.data, data.y.numpy(), data.test_from, fold)
    feature_shape(cfg.model, data.input_shape)
    check_memory(cfg, data.input_shape, len(data.classes))


def meta_model(cfg: ExperimentConfig, input_shape: Shape, num_classes: int) -> ConvNet:
    """The configured network on the ``meta`` device: shapes and counts, no memory."""
    with torch.device("meta"):
        return ConvNet(cfg.model, input_shape, num_classes)


_ROWS: dict[tuple[str, tuple[int, ...], int], list[LayerRow]] = {}  # by architecture
ROWS_KEPT = 256  # architectures remembered (a search samples many; each is a few rows)


def meta_rows(cfg: ExperimentConfig, input_shape: Shape, num_classes: int) -> list[LayerRow]:
    """``summarize`` of the configured network on the ``meta`` device, once per architecture:
    every seed of an arm and every fold of a trial, and both the memory check and the thread
    count, share it (it was a tenth of a small trial's time outside its fit)."""
    key = (repr(cfg.model), tuple(input_shape), num_classes)
    if key not in _ROWS:
        if len(_ROWS) >= ROWS_KEPT:
            _ROWS.clear()
        _ROWS[key] = summarize(meta_model(cfg, input_shape, num_classes), input_shape)
    return _ROWS[key]


def step_macs(cfg: ExperimentConfig, input_shape: Shape, num_classes: int) -> float:
    """Multiply-adds of one training step (forward and backward: about three forwards) of the
    configured network on a batch, counted on the ``meta`` device."""
    rows = meta_rows(cfg, input_shape, num_classes)
    return 3.0 * cfg.data.batch_size * sum(row.macs for row in rows)


def resolved_run(cfg: ExperimentConfig, datasets: Datasets) -> tuple[ExperimentConfig, FastPath]:
    """``cfg`` as a run records and runs it (``fast.resolved``): ``auto`` resolved for this
    machine, ``threads: 0`` for the model's work on its data (loaded into ``datasets``)."""
    return resolved(cfg, step_macs(cfg, *shape_of(cfg.data, datasets)))


def check_memory(cfg: ExperimentConfig, input_shape: Shape, num_classes: int) -> None:
    """The network and a batch fit in this machine's memory, estimated on the ``meta`` device
    before anything is allocated (a hidden layer of 10⁹ units or a 100000×100000 input was a
    traceback after minutes): weights, gradients and two optimizer moments, and each layer's
    output and its gradient for every image of the larger batch (training or evaluation)."""
    rows = meta_rows(cfg, input_shape, num_classes)
    params = sum(row.params for row in rows)
    outputs = sum(math.prod(row.shape) for row in rows)
    batch = max(cfg.data.batch_size, cfg.data.eval_batch_size)
    need, have = FLOAT * (4 * params + 2 * batch * outputs), total_memory()
    if need > have:
        raise CnnlabError(f"model: {params:,} parameters and {outputs:,} layer outputs per "
                          f"{'×'.join(map(str, input_shape))} image need about "
                          f"{need / 2**30:,.1f} GiB with batches of {batch}; allowed: what fits "
                          f"this machine's {have / 2**30:.1f} GiB (fewer model.channels or "
                          "model.hidden_units, a smaller data.image_size or batch size)")


def summary_of(cfg: ExperimentConfig, input_shape: tuple[int, int, int] | None, num_classes: int
               ) -> tuple[list[LayerRow], tuple[int, int, int], int]:
    """Per-layer rows of the configured network on ``input_shape`` (default: the configured
    data's, with its classes), with the shape and class count they are for."""
    if input_shape is None:  # the network the fit would train, on the configured data
        data, model = build(cfg)
        input_shape, num_classes = data.input_shape, data.num_classes
    else:  # only shapes and counts: any size is summarised, nothing allocated
        model = meta_model(cfg, input_shape, num_classes)
    return summarize(model, input_shape), input_shape, num_classes
