"""The course's LR range test on the run path: the fit's data, model, layout and precision."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lightning.pytorch.tuner import Tuner
from matplotlib.figure import Figure

from cnnlab.config import ExperimentConfig
from cnnlab.errors import CnnlabError
from cnnlab.images import check_png_out, figure_png, is_cnnlab_png
from cnnlab.outputs.files import write_output
from cnnlab.process import lightning_interrupts
from cnnlab.tracking.runs import small_run
from cnnlab.training.build import build
from cnnlab.training.fast import prepare, resolve
from cnnlab.training.module import Classifier
from cnnlab.training.trainer import build_trainer


@dataclass(frozen=True)
class LRFind:
    """The LR range test's suggestion and its loss-vs-learning-rate plot."""

    suggestion: float
    points: int
    plot_png: bytes


def find_lr(cfg: ExperimentConfig, out: Path, min_lr: float = 1e-6, max_lr: float = 1.0,
            num_training: int = 100) -> LRFind:
    """Lightning's LR finder: train briefly with an exponentially growing learning rate."""
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=min_lr,
                                                              scheduler="none"))
    data, model = build(cfg)
    module = Classifier.of(cfg, data, model)
    fast = resolve(cfg)
    prepare(model, fast, compile_model=False)  # the layout and precision the fit will use
    steps_per_epoch = len(data.train_dataloader())
    # one process: every rank of a distributed fit finds the same rate on its own
    trainer_cfg = dataclasses.replace(cfg.trainer, max_epochs=-(-num_training // steps_per_epoch),
                                      devices=1, num_nodes=1, strategy="auto",
                                      precision=fast.precision)
    with tempfile.TemporaryDirectory() as scratch, lightning_interrupts():  # scratch: its ckpt
        trainer = build_trainer(trainer_cfg, Path(scratch), [])
        finder = Tuner(trainer).lr_find(module, datamodule=data, min_lr=min_lr, max_lr=max_lr,
                                        num_training=num_training, update_attr=False)
    lrs = np.asarray(finder.results["lr"] if finder else [])
    losses = np.asarray(finder.results["loss"] if finder else [])
    keep = np.isfinite(losses)
    lrs, losses = lrs[keep], losses[keep]
    if len(losses) < 15:
        raise CnnlabError(f"lr-find: {len(losses)} points before the loss blew up, too few for a "
                          "suggestion (15 needed); allowed: a larger --num-training or a smaller "
                          "--max-lr")
    # Steepest descent of the (smoothed) loss against log10(lr), up to the loss minimum: the
    # fastai rule. Lightning's own suggestion differentiates against lr itself, which favours
    # the tiniest learning rates.
    stop = 10 + int(np.argmin(losses[10:])) + 1  # the first points are smoothing warm-up
    slopes = np.gradient(losses[:stop], np.log10(lrs[:stop]))
    best = 10 + int(np.argmin(slopes[10:]))
    suggestion = float(lrs[best])
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(lrs, losses)
    ax.plot([suggestion], [losses[best]], "o", color="tab:red", markersize=9)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(f"LR range test: suggestion {suggestion:.3g}")
    return LRFind(suggestion, len(losses), figure_png(fig, dpi=100))


def write_lr_find(cfg: ExperimentConfig, out: Path, min_lr: float, max_lr: float,
                  num_training: int) -> LRFind:
    """``cnnlab lr-find``: the range test's plot as the PNG ``out``, its W&B run beside it."""
    check_png_out(out)
    if not 0 < min_lr < max_lr:
        raise CnnlabError(f"--min-lr {min_lr:g} --max-lr {max_lr:g}: allowed: 0 < min < max")
    found = find_lr(cfg, out.parent, min_lr, max_lr, num_training)
    write_output(out, found.plot_png, is_cnnlab_png)
    small_run(cfg, out.parent, "lr-find", {"lr_suggestion": found.suggestion,
                                           "points": found.points}, {"lr_find": out})
    return found
