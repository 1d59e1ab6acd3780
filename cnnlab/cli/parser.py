"""The ``cnnlab`` command line: its commands, options and their types (values checked here)."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from cnnlab import __version__
from cnnlab.cli.commands import (
    cmd_ablate,
    cmd_augment_preview,
    cmd_export,
    cmd_fit,
    cmd_lr_find,
    cmd_plan,
    cmd_predict,
    cmd_report,
    cmd_summary,
    cmd_sync,
    cmd_tune,
)
from cnnlab.cpus import WORKERS_ENV
from cnnlab.errors import CnnlabError, did_you_mean

DESCRIPTION = """\
A PyTorch Lightning lab for comparing ConvNet training techniques: train one model, size it,
find its learning rate, ablate techniques over seeds with decided verdicts, search
hyperparameters by cross-validation, and sync every run to Weights & Biases.

Every command takes --config FILE and key=value overrides (cnnlab fit model.norm=layer);
cnnlab COMMAND --help shows its options and defaults. Exit status: 0 done, 1 a study left
incomplete, 2 bad input, 75 the study's database stopped answering, 129/130/143 stopped by a
signal (rerun the same command to resume).
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            message += did_you_mean(choice[1], re.findall(r"'([^']*)'", choice[2]))
        raise CnnlabError(f"{self.prog}: {message} (see {self.prog} --help)")


def _shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: three positive integers C,H,W")
    return shape


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a positive integer")
    return value


def _workers(text: str) -> int | str:
    if text == "auto":
        return text  # counted when the command starts, and said
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a positive integer or auto")


def _seeds(text: str) -> int | str:
    if text == "auto" or (text.isdigit() and int(text) > 0):
        return text if text == "auto" else int(text)
    raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a positive integer or auto")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a positive number of seconds")
    return value


def _plan(text: str) -> tuple[int, int, int]:
    try:
        first, most, step = (int(part) for part in text.split(":"))
    except ValueError:
        first = most = step = 0
    if not 1 <= first <= most or step < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: FIRST:MOST:STEP seeds, "
                                         "positive integers with FIRST ≤ MOST, e.g. 3:8:2")
    return first, most, step


WORKERS_HELP = (f"worker processes on this machine, one torch thread each (default: ${WORKERS_ENV}, "
                "else auto = one per core that other processes leave free)")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="extra YAML config merged over configs/default.yaml, or a shipped "
                        "preset's name (cifar10_fast); repeatable")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. model.norm=layer optim.lr=0.01")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cnnlab", description=DESCRIPTION,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    fit = sub.add_parser("fit", help="train and test one model")
    _common(fit)
    fit.add_argument("--out", type=Path, help="run directory (default runs/fit-<time>)")
    fit.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    fit.add_argument("--print-config", action="store_true",
                     help="print the config as the run will record it ('auto' resolved on this "
                     "machine) and exit")
    fit.set_defaults(func=cmd_fit)

    summary = sub.add_parser("summary", help="per-layer shapes, parameters and mult-adds")
    _common(summary)
    summary.add_argument("--input-shape", type=_shape, metavar="C,H,W",
                         help="input shape (default: the configured dataset's)")
    summary.add_argument("--num-classes", type=_positive, default=10,
                         help="with --input-shape (default: %(default)s)")
    summary.set_defaults(func=cmd_summary)

    ablate = sub.add_parser("ablate", help="run (or resume) ablation specs and report them")
    ablate.add_argument("specs", nargs="+", metavar="SPEC|key=value",
                        help="ablation spec(s): a shipped name (norm) or a file (experiments/norm.yaml); "
                        "key=value overrides "
                        "apply to every trial, after the quick preset (part of the study: a "
                        "rerun with other overrides is refused)")
    ablate.add_argument("--quick", action="store_true",
                        help="the spec's quick preset (its own study, <name>-quick)")
    ablate.add_argument("--seeds", type=_seeds, metavar="N|auto",
                        help="seeds per arm (default: the spec's), or auto: add 2 seeds per "
                        "round to the arms of undecided comparisons, up to 10")
    ablate.add_argument("--storage", help="Optuna storage URL (default DIR/study.journal)")
    ablate.add_argument("--workers", type=_workers, default=os.environ.get(WORKERS_ENV, "auto"),
                        metavar="N|auto", help=WORKERS_HELP)
    ablate.add_argument("--out", type=Path, help="report directory (default reports/<study>)")
    ablate.add_argument("--pilot", action="store_true",
                        help="run the spec's pilot (<name>-pilot: --seeds or 3 seeds an arm from "
                        "seed 1000, never a confirmatory seed) for cnnlab plan")
    ablate.set_defaults(func=cmd_ablate)

    tune = sub.add_parser("tune", help="cross-validated Optuna search, then refit and test")
    tune.add_argument("spec", metavar="SPEC", help="search spec: a shipped name (search) or a "
                      "file (experiments/search.yaml)")
    tune.add_argument("overrides", nargs="*", metavar="key=value",
                      help="overrides for every trial and the refit, after the quick preset "
                      "(part of the study: a rerun with other overrides is refused)")
    tune.add_argument("--trials", type=_positive, help="finished trials the study should hold "
                      "(default: the spec's; rerun with more to add trials)")
    tune.add_argument("--timeout", type=_seconds, help="start no new trial after S seconds")
    tune.add_argument("--folds", type=_positive, help="k of k-fold CV (default: the spec's)")
    tune.add_argument("--storage", help="Optuna storage URL (default DIR/study.journal)")
    tune.add_argument("--workers", type=_workers, default=os.environ.get(WORKERS_ENV, "auto"),
                      metavar="N|auto", help=WORKERS_HELP)
    tune.add_argument("--study", help="study name (default: the spec's name)")
    tune.add_argument("--quick", action="store_true", help="the spec's quick preset")
    tune.add_argument("--out", type=Path, help="report directory (default reports/<study>)")
    tune.set_defaults(func=cmd_tune)

    plan = sub.add_parser("plan", help="size a spec's seed plan from its pilot: "
                          "seeds needed, power and family-wise error by simulation")
    plan.add_argument("spec", metavar="SPEC", help="the ablation spec (a shipped name or a file)")
    plan.add_argument("--quick", action="store_true", help="the pilot is the quick preset's")
    plan.add_argument("--plan", type=_plan, action="append", default=[], metavar="F:M:S",
                      help="a seed plan to simulate: first look, most seeds, step "
                      "(repeatable; default: the spec's)")
    plan.add_argument("--effect", type=float, help="the |Δ| to size for (default: the pilot's)")
    plan.add_argument("--sims", type=_positive, default=2000,
                      help="simulated studies per plan (default: %(default)s)")
    plan.add_argument("--seed", type=int, default=0, help="the simulation's seed")
    plan.add_argument("--pilot", type=Path, metavar="CSV",
                      help="the pilot's results.csv (default: the one shipped beside the spec, "
                      "else the pilot study in --out)")
    plan.add_argument("--storage", help="Optuna storage URL (default DIR/study.journal)")
    plan.add_argument("--out", type=Path, help="the pilot study's folder (default "
                      "reports/<name>-pilot[-quick], as cnnlab ablate SPEC --pilot makes it)")
    plan.set_defaults(func=cmd_plan)

    report = sub.add_parser("report", help="rebuild an ablation report from its storage, or "
                            "--summary: one table row per study")
    report.add_argument("names", nargs="+", metavar="NAME",
                        help="the study name, e.g. norm or norm-quick (several with --summary)")
    report.add_argument("--summary", action="store_true",
                        help="print a markdown table of the studies' verdicts (reports/NAME each, "
                        "read only); write nothing")
    report.add_argument("--storage", help="Optuna storage URL (default: the one DIR records, else "
                        "DIR/study.journal)")
    report.add_argument("--out", type=Path, help="report directory (default reports/NAME)")
    report.set_defaults(func=cmd_report)

    sync = sub.add_parser("sync", help="upload the offline W&B runs of studies and runs "
                          "(W&B's own wandb sync), then check with the server that each "
                          "arrived whole")
    sync.add_argument("targets", nargs="*", metavar="STUDY|DIR",
                      help="a study (reports/NAME) or a folder (default: reports and runs)")
    sync.add_argument("--dry-run", action="store_true", help="list the runs; upload nothing")
    sync.add_argument("--timeout", type=_seconds, default=300.0,
                      help="give up after S seconds in which no run finished uploading "
                      "(default 300; the next sync retries what is left)")
    sync.set_defaults(func=cmd_sync)

    lr = sub.add_parser("lr-find", help="LR range test: loss vs learning rate, a suggestion")
    _common(lr)
    lr.add_argument("--out", type=Path, default=Path("runs/lr-find/lr_find.png"),
                    help="the plot (PNG); its W&B run goes beside it (default: %(default)s)")
    lr.add_argument("--min-lr", type=float, default=1e-6,
                    help="the first learning rate tried (default: %(default)g)")
    lr.add_argument("--max-lr", type=float, default=1.0,
                    help="the last learning rate tried (default: %(default)g)")
    lr.add_argument("--num-training", type=_positive, default=100,
                    help="training steps, one learning rate each (default: %(default)s)")
    lr.set_defaults(func=cmd_lr_find)

    exp = sub.add_parser("export", help="a run's best model as one self-contained file "
                         "(normalisation, class names inside), optionally BN-fused")
    exp.add_argument("run", type=Path, metavar="RUN", help="the --out of a cnnlab fit, or a "
                     ".ckpt it wrote")
    exp.add_argument("--fuse-bn", action="store_true",
                     help="fold batch norm into the preceding convs (checked, timed)")
    exp.add_argument("--out", type=Path, help="file to write (default: beside the run, "
                     "model.pt or model_fused.pt)")
    exp.set_defaults(func=cmd_export)

    pred = sub.add_parser("predict", help="classify image files, folders of images or .npz "
                          "arrays with a run's model or an export")
    pred.add_argument("model", type=Path, metavar="RUN_OR_EXPORT",
                      help="a cnnlab fit's --out, a .ckpt it wrote, or a cnnlab export")
    pred.add_argument("inputs", type=Path, nargs="+", metavar="INPUT",
                      help="image files, folders of images, or .npz files with an array x")
    pred.add_argument("--out", type=Path, help="write a CSV (input, class, probability) instead "
                      "of printing a table; never replaces an existing file")
    pred.set_defaults(func=cmd_predict)

    aug = sub.add_parser("augment-preview",
                         help="a PNG grid of training samples and augmented variants")
    _common(aug)
    aug.add_argument("--out", type=Path, default=Path("runs/augment-preview/preview.png"),
                     help="the PNG file to write (default: %(default)s)")
    aug.add_argument("--samples", type=_positive, default=8,
                     help="rows: training samples (default: %(default)s)")
    aug.add_argument("--variants", type=_positive, default=7,
                     help="augmented columns per sample (default: %(default)s)")
    aug.set_defaults(func=cmd_augment_preview)
    return parser
