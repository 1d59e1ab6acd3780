"""Weights & Biases setup: offline unless the user chose a mode, one run per call, always finished.

A run's per-epoch metrics are charted against ``epoch`` (``define_metric``), with the best
validation accuracy and loss as its summary. A study has one summary run (a stable id derived
from the study, resumed on every rerun) with numeric tables, native charts and an artifact of its
report. ``wandb`` is imported by the functions that start a run: with W&B disabled no process
pays for it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import pydantic
import wandb
from lightning.pytorch.loggers import WandbLogger

from cnnlab.config import ExperimentConfig, to_dict
from cnnlab.errors import CnnlabError
from cnnlab.metrics import VAL_ACC, VAL_LOSS
from cnnlab.outputs.files import JOURNAL, held_storage
from cnnlab.outputs.ownership import Manifest
from cnnlab.tracking.summary import StudySummary

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


def _init(requirements: bool = True, **kwargs: Any) -> Any:
    """``wandb.init`` with quiet settings; a server that can't be reached is one clear error.

    ``requirements``: record the installed packages (``requirements.txt``). Reading them takes
    W&B about 70 ms, a tenth of a quick trial: a study's trials leave it to the study's
    summary run, which records the same environment once.

    Every run is a new one (``reinit="create_new"``) that only the code which started it
    finishes: a study's summary run is written by a thread while the next trial trains in the
    same process, and W&B's default would hand the trial the summary run to log into."""
    settings = wandb.Settings(silent=True, console="off", x_disable_stats=True,
                              x_disable_machine_info=True, disable_git=True, save_code=False,
                              x_save_requirements=requirements)
    if "WANDB_INIT_TIMEOUT" not in os.environ:
        settings.init_timeout = INIT_TIMEOUT_S
    try:  # W&B reads WANDB_* variables once a process (its singleton): check them every time
        wandb.Settings().update_from_env_vars(dict(os.environ))
        return wandb.init(settings=settings, reinit="create_new", **kwargs)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        name = ".".join(map(str, first["loc"])) or "settings"
        raise CnnlabError(f"W&B setting {name} (environment variable WANDB_{name.upper()}="
                          f"{first.get('input')!r}): {first['msg']}; allowed: a valid value, or "
                          f"unset WANDB_{name.upper()}") from None
    except (wandb.errors.CommError, wandb.errors.AuthenticationError, wandb.errors.UsageError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CnnlabError(f"wandb.mode={kwargs.get('mode')}: W&B did not answer ({reason}); "
                          "allowed: wandb.mode=offline (then wandb sync), or a reachable server "
                          "and a valid key") from None


def share_service(cfg: ExperimentConfig) -> None:
    """Start W&B's service in this process, so worker processes started afterwards (they inherit
    ``WANDB_SERVICE``) log through it instead of each starting their own."""
    if wandb_mode(cfg) != "disabled":
            wandb.setup()


PER_EPOCH = ("train/*", "val/*", "lr", "grad_norm/*", "weight_norm/*")  # charted vs epoch


def define_metrics(run: Any) -> None:
    """One x-axis (``epoch``) for every per-epoch metric; best val accuracy / loss as summary
    (test metrics are logged once, so their summary is their value)."""
    run.define_metric("epoch")
    for pattern in PER_EPOCH:
        run.define_metric(pattern, step_metric="epoch")
    run.define_metric(VAL_ACC, step_metric="epoch", summary="max")
    run.define_metric(VAL_LOSS, step_metric="epoch", summary="min")


def wandb_logger(cfg: ExperimentConfig, out: Path, context: dict[str, Any] | None = None,
                 default_name: str | None = None) -> WandbLogger | None:
    """A Lightning W&B logger writing under ``out/wandb``, or None when W&B is disabled; named
    ``wandb.name``, else ``default_name`` (the run's folder: W&B's own is ``run-<id>``).

    ``context`` joins the run's config (a study trial's study, arm, factor levels and seed; a
    fold's trial and fold), so the dashboard can group, filter and plot runs by them; such a
    run does not list the installed packages again (the study's summary run does).
    """
    mode = wandb_mode(cfg)
    if mode == "disabled":
        return None
    # The run starts here (not lazily inside the timed training loop) and Lightning logs into it.
    experiment = _init(
        requirements=context is None,
        project=cfg.wandb.project,
        name=cfg.wandb.name or default_name,
        group=cfg.wandb.group,
        job_type=cfg.wandb.job_type,
        tags=list(cfg.wandb.tags),
        dir=str(out),
        mode=mode,
        config={**to_dict(cfg), **(context or {})},
    )
    define_metrics(experiment)
    return WandbLogger(experiment=experiment, save_dir=str(out))


def log_files(run: Any, name: str, kind: str, files: list[Path], metadata: dict[str, Any]
              ) -> None:
    """One artifact holding ``files`` (W&B copies them, so they may move afterwards)."""
    artifact = wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]", "_", name), type=kind, metadata=metadata)
    for path in files:
        artifact.add_file(str(path), name=path.name)
    run.log_artifact(artifact)


def finish(logger: WandbLogger | None, summary: dict[str, Any],
           model: list[Path] | None = None) -> None:
    """Record ``summary`` as the run's final metrics, log ``model`` files (a checkpoint and its
    config) as a ``model`` artifact, and close the run."""
    if logger is None:
        return
    run = logger.experiment
    run.summary.update(summary)
    if model:
        log_files(run, f"model-{run.id}", "model", model, {k: v for k, v in summary.items()
                                                           if isinstance(v, int | float)})
    run.finish()


def stable_id(project: str, study: str, out: Path) -> str:
    """The W&B run id of a study's summary run: the same for every rerun of the study. A study
    kept outside its default folder (``--out reports/x`` for study ``norm``) is another study
    of the same name, so its folder is part of the id (two used to merge on ``cnnlab sync``);
    a study in a database is the database's (every machine sharing it updates one run, and a
    journal study of the same name another)."""
    manifest = Manifest.read(out)
    storage = held_storage(out, manifest) if manifest is not None else ""
    own = not storage or storage == str((out / JOURNAL).absolute())
    default = out.name == study and out.parent.name == "reports"
    key = (f"{project}/{study}@{storage}" if not own else
           f"{project}/{study}" if default else f"{project}/{study}@{out.resolve()}")
    return "summary-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def study_run(cfg: ExperimentConfig, out: Path, s: StudySummary) -> None:
    """Create or update the study's one summary run (stable id, resumed) under ``out``."""
    mode = wandb_mode(cfg)
    if mode == "disabled":
        return
    run = _init(project=cfg.wandb.project, group=s.study, job_type="summary",
                name=f"{s.study} summary", tags=[s.study, "summary"], dir=str(out), mode=mode,
                config=s.config, notes=s.notes, id=stable_id(cfg.wandb.project, s.study, out),
                resume="allow")
    tables = {}
    for name, rows in s.tables.items():
        columns = list(dict.fromkeys(k for row in rows for k in row))
        tables[name] = wandb.Table(columns=list[str | int](columns),
                                   data=[[row.get(c) for c in columns] for row in rows])
    log: dict[str, Any] = dict(tables)
    if s.bar is not None:
        table, x, y = s.bar
        log[f"charts/{y}_by_{x}"] = wandb.plot.bar(tables[table], x, y, title=f"{s.study}: {y}")
    for table, x, y, series in s.lines:
        log[f"charts/{y}_vs_{x}"] = wandb.plot.line(tables[table], x, y, stroke=series,
                                                    title=f"{s.study}: {y} vs {x}")
    log |= {f"plots/{p.stem}": wandb.Image(str(p)) for p in s.files if p.suffix == ".png"}
    run.log(log, step=s.step)
    run.summary.update(s.summary)
    log_files(run, f"{s.study}-report", "report", s.files, {"study": s.study})
    run.finish()


def small_run(cfg: ExperimentConfig, out: Path, job_type: str, summary: dict[str, Any],
              images: dict[str, Path] | None = None, name: str | None = None,
              context: dict[str, Any] | None = None) -> None:
    """A short W&B run of numbers and images: the LR finder's plot, a search trial's folds."""
    mode = wandb_mode(cfg)
    if mode == "disabled":
        return
    run = _init(requirements=context is None, project=cfg.wandb.project, group=cfg.wandb.group,
                job_type=job_type, name=name, tags=list(cfg.wandb.tags), dir=str(out), mode=mode,
                config={**to_dict(cfg), **(context or {})})
    if images:
        run.log({key: wandb.Image(str(path)) for key, path in images.items()})
    run.summary.update(summary)
    run.finish()
