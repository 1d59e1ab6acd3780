"""Stratified, seeded train/val/test splits and k folds of the training portion."""

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from cnnlab.config import DataConfig
from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class Split:
    """Index arrays into the full dataset."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _stratified(indices: np.ndarray, y: np.ndarray, size: float, seed: int, what: str):
    try:
        return train_test_split(indices, test_size=size, stratify=y[indices], random_state=seed)
    except ValueError as err:
        raise CnnlabError(
            f"data: cannot cut a stratified {what} split of {size:g} from {len(indices)} samples "
            f"({str(err)[:160]}…); allowed: fractions that leave every class at least one sample "
            "per split"
        ) from None


def split_indices(
    y: np.ndarray, val_fraction: float, test_fraction: float, seed: int, test_from: int | None = None
) -> Split:
    """Hold out ``test_fraction`` of all samples (or the official test split from ``test_from``
    on), then ``val_fraction`` of the rest for validation."""
    if test_from is None:
        dev, test = _stratified(np.arange(len(y)), y, test_fraction, seed, "test")
    else:
        dev, test = np.arange(test_from), np.arange(test_from, len(y))
    train, val = _stratified(dev, y, val_fraction, seed, "validation")
    return Split(train, val, test)


def fold_indices(dev: np.ndarray, y: np.ndarray, fold: int, folds: int, seed: int):
    """Fold ``fold`` of ``folds`` stratified folds of ``dev``: (train indices, val indices)."""
    counts = np.bincount(y[dev])
    if folds > counts[counts > 0].min():
        raise CnnlabError(
            f"folds: {folds} folds need at least {folds} samples of every class, but the training "
            f"portion has a class with {counts[counts > 0].min()}; allowed: 2..{counts[counts > 0].min()}"
        )
    kfold = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    train, val = list(kfold.split(dev, y[dev]))[fold]
    return dev[train], dev[val]


def run_indices(cfg: DataConfig, labels: np.ndarray, test_from: int | None,
                fold: tuple[int, int] | None = None, refit: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The (train, val, test) indices of one run: the split; fold ``fold`` of its training
    portion (no test); or, with ``refit``, train + val as training (no validation)."""
    split = split_indices(labels, cfg.val_fraction, cfg.test_fraction, cfg.split_seed, test_from)
    if refit:  # all training data, no validation: the final model of a search
        return np.concatenate([split.train, split.val]), None, split.test
    if fold is None:
        return split.train, split.val, split.test
    dev = np.concatenate([split.train, split.val])
    train, val = fold_indices(dev, labels, fold[0], fold[1], cfg.split_seed)
    return train, val, None
