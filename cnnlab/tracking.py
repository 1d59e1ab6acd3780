"""Weights & Biases setup: offline unless the user chose a mode, one run per call, always finished.

``wandb`` is imported by the functions that start a run: with W&B disabled no process pays for it.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

from cnnlab.config import ExperimentConfig, to_dict
from cnnlab.errors import CnnlabError

MODES = ("offline", "online", "disabled", "shared", "dryrun", "run")  # what wandb itself accepts
INIT_TIMEOUT_S = 30.0  # online with an unreachable server: one line after this, not a 90 s hang


def wandb_mode(cfg: ExperimentConfig) -> str:
    """``wandb.mode`` if set, else ``$WANDB_MODE``, else offline (never a login prompt or wait)."""
    if cfg.wandb.mode:
        return cfg.wandb.mode
    mode = os.environ.get("WANDB_MODE") or "offline"
    if mode not in MODES:
        raise CnnlabError(f"WANDB_MODE: got {mode!r}; allowed: {', '.join(MODES)} (or unset it: "
                          "cnnlab runs offline by default)")
    return mode


def _init(**kwargs: Any) -> Any:
    """``wandb.init`` with quiet settings; a server that can't be reached is one clear error."""
    import wandb

    timeout = {} if "WANDB_INIT_TIMEOUT" in os.environ else {"init_timeout": INIT_TIMEOUT_S}
    settings = wandb.Settings(silent=True, console="off", x_disable_stats=True,
                              x_disable_machine_info=True, disable_git=True, save_code=False,
                              **timeout)
    try:
        return wandb.init(settings=settings, **kwargs)
    except (wandb.errors.CommError, wandb.errors.AuthenticationError, wandb.errors.UsageError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CnnlabError(f"wandb.mode={kwargs.get('mode')}: W&B did not answer ({reason}); "
                          "allowed: wandb.mode=offline (then wandb sync), or a reachable server "
                          "and a valid key") from None


def wandb_logger(cfg: ExperimentConfig, out: Path) -> WandbLogger | None:
    """A Lightning W&B logger writing under ``out/wandb``, or None when W&B is disabled."""
    mode = wandb_mode(cfg)
    if mode == "disabled":
        return None
    # The run starts here (not lazily inside the timed training loop) and Lightning logs into it.
    experiment = _init(
        project=cfg.wandb.project,
        name=cfg.wandb.name,
        group=cfg.wandb.group,
        job_type=cfg.wandb.job_type,
        tags=list(cfg.wandb.tags),
        dir=str(out),
        mode=mode,
        config=to_dict(cfg),
    )
    logger = WandbLogger(experiment=experiment, save_dir=str(out))
    return logger


def finish(logger: WandbLogger | None, summary: dict[str, float]) -> None:
    """Record ``summary`` as the run's final metrics and close the run."""
    if logger is None:
        return
    logger.experiment.summary.update(summary)
    logger.experiment.finish()


def summary_run(cfg: ExperimentConfig, out: Path, study: str, table: list[list[str]],
                config: dict[str, Any]) -> None:
    """One W&B run per ablation: its report table (header row first) and every plot of ``out``."""
    import wandb

    mode = wandb_mode(cfg)
    if mode == "disabled":
        return
    run = _init(project=cfg.wandb.project, group=study, job_type="summary",
                name=f"{study} summary", tags=[study, "summary"], dir=str(out), mode=mode,
                config=config, reinit="finish_previous")
    log: dict[str, Any] = {"report": wandb.Table(columns=table[0], data=table[1:])}
    log |= {f"plots/{p.stem}": wandb.Image(str(p)) for p in sorted(out.glob("*.png"))}
    run.log(log)
    run.finish()


def search_summary_run(cfg: ExperimentConfig, out: Path, study: str, params: dict[str, Any],
                       numbers: dict[str, float]) -> None:
    """One W&B run per search: best parameters, its numbers, ``out/trials.csv`` and the plots."""
    import wandb

    mode = wandb_mode(cfg)
    if mode == "disabled":
        return
    run = _init(project=cfg.wandb.project, group=study, job_type="summary",
                name=f"{study} summary", tags=[study, "summary"], dir=str(out), mode=mode,
                config={"best_params": params}, reinit="finish_previous")
    with open(out / "trials.csv") as f:
        rows = list(csv.reader(f))
    log: dict[str, Any] = {"trials": wandb.Table(columns=rows[0], data=rows[1:])}
    log |= {f"plots/{p.stem}": wandb.Image(str(p)) for p in sorted(out.glob("*.png"))}
    run.log(log)
    run.summary.update(numbers)
    run.finish()


def image_run(cfg: ExperimentConfig, out: Path, job_type: str, images: dict[str, Path],
              summary: dict[str, float]) -> None:
    """A small W&B run holding a command's images and numbers (e.g. the LR finder's plot)."""
    import wandb

    mode = wandb_mode(cfg)
    if mode == "disabled":
        return
    run = _init(project=cfg.wandb.project, group=cfg.wandb.group, job_type=job_type,
                     tags=list(cfg.wandb.tags), dir=str(out), mode=mode, config=to_dict(cfg),
                     reinit="finish_previous")
    run.log({key: wandb.Image(str(path)) for key, path in images.items()})
    run.summary.update(summary)
    run.finish()
