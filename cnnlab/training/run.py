"""The one run path: a validated config in, a trained and evaluated model's metrics out.

``cnnlab fit``, every ablation arm and every cross-validation fold call ``run``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from cnnlab.config import ExperimentConfig, to_yaml
from cnnlab.data.augment import preview
from cnnlab.data.sources import Datasets
from cnnlab.diagnostics import (
    accuracy,
    bn_train_eval_gap,
    curves_png,
    epochs_to,
    filters_png,
    first_conv_filters,
    weight_l2,
    weight_sparsity,
)
from cnnlab.errors import CnnlabError
from cnnlab.images import png_image, to_uint8
from cnnlab.metrics import (
    FAILURE,
    TEST_ACC,
    TEST_LOSS,
    TRAIN_LOSS,
    count_key,
    counts,
    dashboard_values,
    failure_of,
)
from cnnlab.outputs.files import abort_run, begin_run, commit_run, staging_path
from cnnlab.outputs.ownership import write_atomic
from cnnlab.process import lightning_interrupts
from cnnlab.tracking.runs import finish, wandb_logger
from cnnlab.training.build import build, resolved_run
from cnnlab.training.distributed import is_rank_zero
from cnnlab.training.fast import prepare
from cnnlab.training.lr_find import find_lr
from cnnlab.training.module import Classifier
from cnnlab.training.trainer import build_trainer


@dataclass(frozen=True)
class RunResult:
    """Final metrics, one history row per epoch, and the run directory."""

    metrics: dict[str, float | bool | str | None]
    history: list[dict[str, float]]
    out: Path

    def number(self, key: str) -> float:
        """A metric the run measured as a number (``val_acc``, ``epochs``…)."""
        value = self.metrics[key]
        if not isinstance(value, int | float):
            raise CnnlabError(f"{self.out}: the run recorded no number for {key} ({value!r})")
        return float(value)


def _history_csv(history: list[dict[str, float]]) -> str:
    """One row per epoch (Lightning's ``CSVLogger`` writes a row per logging step into its own
    ``lightning_logs/version_N/`` folder; this file is written atomically with the run)."""
    columns = list(dict.fromkeys(key for row in history for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def _counted(split: str, share: float, labels: torch.Tensor) -> dict[str, float | None]:
    """An accuracy's exact form: the images correct and evaluated (``metrics.counts``)."""
    return {count_key(split, "correct"): counts(share, len(labels)), count_key(split, "total"): len(labels)}


def _majority_share(labels: torch.Tensor) -> float:
    """The accuracy of always predicting the most frequent class (chance, for ``failure_of``)."""
    return float(torch.bincount(labels.cpu()).max()) / len(labels)


def _mechanisms(model: torch.nn.Module, history: list[dict[str, float]],
                train: tuple[torch.Tensor, torch.Tensor], cfg: ExperimentConfig,
                metrics: dict[str, float | bool | str | None]) -> dict[str, float | None]:
    """What the course's claims are about, on the weights that were tested (the best epoch's):
    sparsity (L1), weight norm (L2), train accuracy and its gap to test accuracy (overfitting),
    and the epochs to ``trainer.target_acc`` validation accuracy (speed of convergence)."""
    train_acc = accuracy(model, *train, batch=512)  # eval mode: the batch size changes nothing
    out: dict[str, float | None] = {
        "train_acc": train_acc, "train_correct": counts(train_acc, len(train[1])),
        count_key("train", "total"): len(train[1]), "weight_sparsity": weight_sparsity(model),
        "weight_l2": weight_l2(model), "epochs_to_target": epochs_to(history, cfg.trainer.target_acc)}
    if "test_acc" in metrics:
        out["generalization_gap"] = train_acc - float(metrics["test_acc"] or 0.0)
    return out


def run(
    cfg: ExperimentConfig,
    out: Path,
    fold: tuple[int, int] | None = None,
    datasets: Datasets | None = None,
    refit: bool = False,
    overwrite: bool = False,
    takeover: bool = False,
    context: dict[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Train ``cfg`` and write ``out/{config.yaml, metrics.json, history.csv, checkpoints/}``.

    With ``fold=(i, k)`` the model trains on the other folds of the training portion, validates
    on fold i and never sees the test split; otherwise it is tested once, with its best weights.
    ``refit`` trains on train + validation with no validation (a search's final model).
    ``datasets`` lets a study load each dataset once for many runs. A run whose training loss turns
    NaN or infinite stops early and reports ``diverged: true``. In distributed training every
    process runs this; only rank 0 writes files and W&B.

    The run is built in a staging folder beside ``out`` and renamed into place when it finished
    (``files.begin_run``): a failed or killed run leaves ``out`` as it was, and ``overwrite``
    replaces an earlier cnnlab run there only once the new one is complete. ``takeover`` (study
    trials) clears a staging folder another worker left, see ``files.begin_run``. ``context``
    joins the W&B run's config (a study trial's study, arm, levels and seed); ``callbacks`` join
    the Trainer's (a search's pruning inside a fold).
    """
    if not is_rank_zero():
        with lightning_interrupts():
            return _run(cfg, staging_path(out), out, fold, datasets, refit, context, callbacks)
    staging = begin_run(out, overwrite, takeover)
    try:
        with lightning_interrupts():
            result = _run(cfg, staging, out, fold, datasets, refit, context, callbacks)
        commit_run(staging, out)
    except BaseException:
        abort_run(staging)  # after a failed commit too: the old run is still in place
        raise
    return result


def _run(cfg: ExperimentConfig, out: Path, final: Path, fold: tuple[int, int] | None,
         datasets: Datasets | None, refit: bool, context: dict[str, Any] | None,
         callbacks: Sequence[Callback]) -> RunResult:
    """``run`` inside the staging folder ``out``; the result names the ``final`` folder."""
    datasets = {} if datasets is None else datasets  # loaded once: for the work, then the fit
    cfg, fast = resolved_run(cfg, datasets)
    torch.set_num_threads(cfg.trainer.threads)  # config.yaml and W&B record what it became
    found = None
    if cfg.optim.lr == "auto":
        found = find_lr(cfg, out)
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=found.suggestion))
    datamodule, model = build(cfg, fold, datasets, refit)
    module = Classifier.of(cfg, datamodule, model)
    prepare(model, fast, cfg.trainer.compile)

    zero = is_rank_zero()
    if zero:
        write_atomic(out / "config.yaml", to_yaml(cfg))
        if found is not None:
            write_atomic(out / "lr_find.png", found.plot_png)
    logger = wandb_logger(cfg, out, context, default_name=final.name) if zero else None
    trainer = build_trainer(cfg.trainer, out, [logger] if logger else [], validate=not refit,
                            callbacks=callbacks, sync_batchnorm=cfg.model.sync_batchnorm)
    datamodule.to_device(trainer.strategy.root_device, fast.channels_last)
    if logger is not None and datamodule.augment is not None:
        sample = datamodule.train[0][:8]
        grid = preview(sample, datamodule.augment, datamodule.mean, datamodule.std, seed=cfg.seed)
        logger.log_image("augment/preview", [to_uint8(grid)])
    metrics: dict[str, float | bool | str | None] = {} if found is None else {"lr_found": found.suggestion}
    filters_start = first_conv_filters(model) if cfg.trainer.images else None
    start_png = filters_png(model, "start") if cfg.trainer.images else b""
    model_files: list[Path] | None = None  # the W&B model artifact's
    try:
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        metrics["fit_seconds"] = time.perf_counter() - start
        metrics["epochs"] = len(module.history)
        metrics["max_epochs"] = cfg.trainer.max_epochs
        best = trainer.checkpoint_callback
        assert isinstance(best, ModelCheckpoint)  # build_trainer's
        if datamodule.val is not None and best.best_model_score is not None:
            val_acc = float(best.best_model_score)
            metrics["val_acc"] = val_acc
            metrics |= _counted("val", val_acc, datamodule.val[1])
        metrics["train_loss"] = module.history[-1][TRAIN_LOSS]
        metrics["diverged"] = module.diverged
        if datamodule.val is not None and zero:
            gap = bn_train_eval_gap(model, *datamodule.val, batch=cfg.data.batch_size)
            if gap is not None:
                metrics["bn_train_eval_gap"] = gap  # val accuracy, train-mode BN minus eval-mode
        if fold is None:
            ckpt = "best" if best.best_model_path else None  # none when every epoch diverged
            (test,) = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False,
                                   weights_only=True)
            assert datamodule.test is not None  # no fold: a test split
            metrics["test_acc"] = test[TEST_ACC]
            metrics["test_loss"] = test[TEST_LOSS]
            metrics |= _counted("test", test[TEST_ACC], datamodule.test[1])
        tested = datamodule.test if fold is None else datamodule.val
        if tested is not None:
            metrics["chance_acc"] = _majority_share(tested[1])
        if zero:
            metrics |= _mechanisms(model.eval(), module.history, datamodule.train, cfg, metrics)
        metrics[FAILURE] = failure_of(metrics)
        if logger is not None and filters_start is not None:
            logger.log_image("filters", [to_uint8(filters_start),
                                         to_uint8(first_conv_filters(model))],
                             caption=["start", "end"])
            logger.log_image("curves", [png_image(curves_png(module.history))])
        if logger is not None and found is not None:
            logger.log_image("lr_find", [png_image(found.plot_png)])
        ckpt = best.best_model_path
        if cfg.wandb.log_model and ckpt:
            model_files = [Path(ckpt), out / "config.yaml"]
    finally:
        finish(logger, dashboard_values(metrics), model_files)
    if not zero:
        return RunResult(metrics, module.history, final)
    if filters_start is not None:
        write_atomic(out / "filters_start.png", start_png)
        write_atomic(out / "filters_end.png", filters_png(model, "end"))
        write_atomic(out / "curves.png", curves_png(module.history))
    write_atomic(out / "history.csv", _history_csv(module.history))
    clean = {k: v if not isinstance(v, float) or math.isfinite(v) else None
             for k, v in metrics.items()}
    write_atomic(out / "metrics.json", json.dumps(clean, indent=2) + "\n")
    return RunResult(metrics, module.history, final)
