"""Weights & Biases setup: offline unless the user chose a mode, one run per call, always finished."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    from lightning.pytorch.loggers import WandbLogger

    from cnnlab.config import ExperimentConfig


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
    from lightning.pytorch.loggers import WandbLogger

    from cnnlab.config import to_dict

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


def summary_run(cfg: ExperimentConfig, out: Path, study: str, report: Any, console: Any) -> None:
    """One W&B run per study: the report as a table, and every plot of ``out`` as an image."""
    mode = wandb_mode(cfg)
    if mode == "disabled":
        return
    import wandb

    from cnnlab.studies.report import table_rows

    run = _init(project=cfg.wandb.project, group=study, job_type="summary",
                     name=f"{study} summary", tags=[study, "summary"], dir=str(out), mode=mode,
                     config={"spec": report.spec.to_dict()},
                     reinit="finish_previous")
    rows = table_rows(report)
    log: dict[str, Any] = {"report": wandb.Table(columns=rows[0], data=rows[1:])}
    log |= {f"plots/{p.stem}": wandb.Image(str(p)) for p in sorted(out.glob("*.png"))}
    run.log(log)
    run.finish()


def search_summary_run(cfg: ExperimentConfig, out: Path, study: str, summary: dict[str, Any]) -> None:
    """One W&B run per search: best parameters, CV and test accuracy, and the Optuna plots."""
    mode = wandb_mode(cfg)
    if mode == "disabled":
        return
    import csv

    import wandb

    run = _init(project=cfg.wandb.project, group=study, job_type="summary",
                     name=f"{study} summary", tags=[study, "summary"], dir=str(out), mode=mode,
                     config={"best_params": summary["params"]},
                     reinit="finish_previous")
    with open(out / "trials.csv") as f:
        rows = list(csv.reader(f))
    log: dict[str, Any] = {"trials": wandb.Table(columns=rows[0], data=rows[1:])}
    log |= {f"plots/{p.stem}": wandb.Image(str(p)) for p in sorted(out.glob("*.png"))}
    run.log(log)
    run.summary.update({k: summary[k] for k in ("cv_mean", "cv_std", "test_acc", "best_trial")})
    run.finish()


def image_run(cfg: ExperimentConfig, out: Path, job_type: str, images: dict[str, Path],
              summary: dict[str, float]) -> None:
    """A small W&B run holding a command's images and numbers (e.g. the LR finder's plot)."""
    mode = wandb_mode(cfg)
    if mode == "disabled":
        return
    import wandb

    from cnnlab.config import to_dict

    run = _init(project=cfg.wandb.project, group=cfg.wandb.group, job_type=job_type,
                     tags=list(cfg.wandb.tags), dir=str(out), mode=mode, config=to_dict(cfg),
                     reinit="finish_previous")
    run.log({key: wandb.Image(str(path)) for key, path in images.items()})
    run.summary.update(summary)
    run.finish()
