"""In-memory data for the one run path: split, train-only normalisation, index-sliced batches."""

from __future__ import annotations

from collections.abc import Iterator
from math import ceil

import lightning as L
import torch
from torch import Tensor

from cnnlab.config import DataConfig
from cnnlab.data.augment import Augment, build_augment
from cnnlab.data.sources import ImageData, load
from cnnlab.data.splits import run_indices


class TensorBatches:
    """Mini-batches cut from in-memory tensors by slicing; reshuffled on every pass if ``shuffle``.

    The optional ``augment`` sees whole batches (training only), so it runs as batched tensor ops
    on whatever device the data lives on. With ``world`` > 1 processes, process ``rank`` gets its
    own shard: a disjoint, equal-sized slice of each epoch's shared permutation in training (so
    every rank takes the same number of steps), every ``world``-th sample in evaluation (so each
    sample is scored exactly once).
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        augment: Augment | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if not shuffle and world > 1:
            x, y = x[rank::world], y[rank::world]
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.augment = shuffle, augment
        self.rank, self.size = rank, len(y) // world if shuffle else len(y)
        self.order = torch.Generator(device=x.device).manual_seed(seed)  # the same on every rank
        self.generator = torch.Generator(device=x.device).manual_seed(seed + rank)
        # Training drops a final partial batch (a batch of one breaks batch norm); eval keeps all.
        self.drop_last = shuffle and self.size > batch_size

    def __len__(self) -> int:
        n = self.size
        return n // self.batch_size if self.drop_last else ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        x, y = self.x, self.y
        if self.shuffle:
            order = torch.randperm(len(y), generator=self.order, device=y.device)
            order = order[self.rank * self.size : (self.rank + 1) * self.size]
            x, y = x[order], y[order]
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            xb = x[start : start + self.batch_size]
            if self.augment is not None:
                xb = self.augment(xb, self.generator)
            yield xb, y[start : start + self.batch_size]


class DataModule(L.LightningDataModule):
    """A dataset split (or fold ``fold`` of ``folds`` of its training portion), held as tensors.

    Lightning's idiom: ``prepare_data`` fetches what must be downloaded (once per machine),
    ``setup`` loads, splits and normalises (once; later calls keep what it made). Normalisation
    statistics (per channel) come from the training part only; the test split is only served
    when no fold is asked for. ``refit`` trains on the whole training portion (train +
    validation) with no validation split. Training batches pass through ``augment`` (by default
    the one ``cfg.augment`` describes). ``data``: a dataset already in memory (a study's).
    """

    classes: list[str]
    input_shape: tuple[int, int, int]
    mean: Tensor
    std: Tensor
    augment: Augment | None
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor] | None
    test: tuple[Tensor, Tensor] | None

    def __init__(
        self,
        cfg: DataConfig,
        seed: int,
        fold: tuple[int, int] | None = None,
        data: ImageData | None = None,
        augment: Augment | None = None,
        refit: bool = False,
    ) -> None:
        super().__init__()
        self.cfg, self.seed, self.fold, self.refit = cfg, seed, fold, refit
        self.data, self.given_augment = data, augment

    def prepare_data(self) -> None:
        if self.data is None and self.cfg.download:  # fetches the files (once per machine) and
            self.data = load(self.cfg)  # keeps them: this process's setup need not read them again

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train"):
            return
        cfg, fold = self.cfg, self.fold
        data = self.data if self.data is not None else load(cfg)
        self.classes = data.classes
        self.input_shape = data.input_shape
        train, val, test = run_indices(cfg, data.y.numpy(), data.test_from, fold, self.refit)
        x_train = data.x[train]
        self.mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
        self.std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        self.augment = self.given_augment or build_augment(cfg.augment, fill=-self.mean / self.std)
        self.train = (self._normalise(x_train), data.y[train])
        self.val = None if val is None else (self._normalise(data.x[val]), data.y[val])
        self.test = None if test is None else (self._normalise(data.x[test]), data.y[test])

    def to_device(self, device: torch.device, channels_last: bool = False) -> None:
        """Keep the whole dataset on ``device`` (a GPU): batches and augmentation stay there.
        ``channels_last`` stores images NHWC once, so every batch sliced from them is too."""
        layout = torch.channels_last if channels_last else torch.contiguous_format
        def move(part: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            return part[0].to(device, memory_format=layout), part[1].to(device)

        self.train = move(self.train)
        self.val = None if self.val is None else move(self.val)
        self.test = None if self.test is None else move(self.test)
        self.mean, self.std = self.mean.to(device), self.std.to(device)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _normalise(self, x: Tensor) -> Tensor:
        return ((x - self.mean) / self.std).contiguous()

    def _shard(self) -> tuple[int, int]:
        """(this process's rank, the number of processes) of the fit under way, else (0, 1)."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer else (0, 1)

    def train_dataloader(self) -> TensorBatches:
        return TensorBatches(*self.train, self.cfg.batch_size, True, self.seed, self.augment,
                             *self._shard())

    def val_dataloader(self) -> TensorBatches:
        if self.val is None:
            raise RuntimeError("a refit on all training data has no validation split")
        rank, world = self._shard()
        return TensorBatches(*self.val, self.cfg.eval_batch_size, rank=rank, world=world)

    def test_dataloader(self) -> TensorBatches:
        if self.test is None:
            raise RuntimeError("a cross-validation fold has no test split")
        rank, world = self._shard()
        return TensorBatches(*self.test, self.cfg.eval_batch_size, rank=rank, world=world)
