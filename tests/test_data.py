"""Splits, folds, train-only normalisation and index-sliced batches."""

import numpy as np
import pytest
import torch

from cnnlab.config import load_config
from cnnlab.data.datamodule import DataModule, TensorBatches
from cnnlab.data.splits import fold_indices, split_indices
from cnnlab.errors import CnnlabError

Y = np.repeat(np.arange(5), 40)  # 5 balanced classes, 200 samples


def test_split_is_stratified_disjoint_and_complete() -> None:
    split = split_indices(Y, 0.15, 0.2, seed=0)
    parts = [split.train, split.val, split.test]
    assert sum(len(p) for p in parts) == len(Y)
    assert len(np.unique(np.concatenate(parts))) == len(Y)
    assert len(split.test) == 40 and len(split.val) == 24  # 15% of the 160 non-test
    for part in parts:
        counts = np.bincount(Y[part], minlength=5)
        assert counts.max() - counts.min() <= 1


def test_split_depends_only_on_its_seed() -> None:
    a, b, c = (split_indices(Y, 0.15, 0.2, seed=s) for s in (0, 0, 1))
    assert np.array_equal(a.test, b.test)
    assert not np.array_equal(np.sort(a.test), np.sort(c.test))


def test_folds_partition_the_training_portion() -> None:
    dev = np.arange(150)
    y = np.repeat(np.arange(5), 30)[np.random.default_rng(0).permutation(150)]
    full = np.zeros(200, dtype=int)
    full[dev] = y
    vals = []
    for i in range(3):
        train, val = fold_indices(dev, full, i, 3, seed=0)
        assert not set(train) & set(val)
        assert set(train) | set(val) == set(dev)
        assert np.bincount(full[val], minlength=5).tolist() == [10] * 5
        vals.append(val)
    assert sorted(np.concatenate(vals).tolist()) == dev.tolist()


def test_more_folds_than_class_members_is_a_clear_error() -> None:
    y = np.array([0, 0, 1, 1, 1])
    with pytest.raises(CnnlabError, match="3 folds need at least 3 samples of every class"):
        fold_indices(np.arange(5), y, 0, 3, seed=0)


def test_normalisation_statistics_come_from_training_data_only() -> None:
    cfg = load_config()
    dm = DataModule(cfg.data, seed=0)
    dm.setup("fit")
    x_train, _ = dm.train
    assert x_train.mean().abs() < 1e-4
    assert x_train.std(dim=(0, 2, 3)).item() == pytest.approx(1.0, abs=1e-3)
    assert dm.val[0].mean().abs() > 1e-4  # val is shifted by train statistics, not its own
    n = len(dm.train[1]) + len(dm.val[1]) + len(dm.test[1])
    assert n == 1797 and dm.input_shape == (1, 8, 8) and dm.num_classes == 10


def test_fold_has_no_test_split_and_uses_the_training_portion() -> None:
    cfg = load_config()
    plain = DataModule(cfg.data, seed=0)
    fold = DataModule(cfg.data, seed=0, fold=(1, 4))
    plain.setup("fit")
    fold.setup("fit")
    assert fold.test is None
    with pytest.raises(RuntimeError):
        fold.test_dataloader()
    assert len(fold.train[1]) + len(fold.val[1]) == len(plain.train[1]) + len(plain.val[1])


def test_batches_are_slices_and_shuffle_is_seeded() -> None:
    x = torch.arange(10.0).view(10, 1, 1, 1)
    y = torch.arange(10)
    plain = TensorBatches(x, y, batch_size=4)
    assert len(plain) == 3
    assert [yb.tolist() for _, yb in plain] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    shuffled = TensorBatches(x, y, batch_size=4, shuffle=True, seed=3)
    assert len(shuffled) == 2  # training drops the final partial batch
    epoch1 = [yb.tolist() for _, yb in shuffled]
    epoch2 = [yb.tolist() for _, yb in shuffled]
    again = [yb.tolist() for _, yb in TensorBatches(x, y, 4, shuffle=True, seed=3)]
    assert epoch1 == again and epoch1 != epoch2
    for xb, yb in shuffled:
        assert torch.equal(xb.view(-1), yb.float())  # images stay with their labels


def test_augment_sees_whole_training_batches_only() -> None:
    seen: list[int] = []

    def augment(xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        seen.append(len(xb))
        return xb + 100

    cfg = load_config(overrides=["data.batch_size=50"])
    dm = DataModule(cfg.data, seed=0, augment=augment)
    dm.setup("fit")
    xb, _ = next(iter(dm.train_dataloader()))
    assert xb.min() > 50 and seen == [50]
    next(iter(dm.val_dataloader()))
    next(iter(dm.test_dataloader()))
    assert seen == [50]
